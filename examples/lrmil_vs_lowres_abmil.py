"""Does LRMIL's low-res student beat a low-res ABMIL trained the same way on synth-c16? And what can the
low-res view carry?

Trains, with the same epochs, learning rate, seed and selection rule:

1. ``abmil`` on the low-res patches (``view="lr"``);
2. ``lrmil`` (stage 1 projector + stage 2 student with distillation from a high-res teacher, by default
   the shipped ``abmil-synth-c16``, which reads every high-res child).

and prints both test results next to the teacher's. To show what the low-res view carries, it also
runs the high-res teacher on (a) the raw low-res features and (b) LRMIL's stage-1 projection
``g(Z)`` of them (each low-res patch one instance): if the projection carried the children's tumour
evidence, the teacher would classify ``g(Z)`` nearly as well as the children. Finally it reports
the patch-level AUC with which the teacher's attention logit, applied to ``g(Z)``, separates
patches with tumour (ground-truth tumour fraction > 0) from tumour-free ones on the test slides.

Run from the repository root (about 30 minutes on one CPU thread with the defaults)::

    .venv/bin/python examples/lrmil_vs_lowres_abmil.py --epochs 3 --threads 1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from wsigym.data.formats import open_dataset
from wsigym.io import atomic_write_json
from zoo import hub
from zoo.batch import collate
from zoo.metrics import classification_metrics
from zoo.registry import create_model
from zoo.train import fit
from zoo.train_lrmil import fit_lrmil


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank AUC of binary ``labels`` by ``scores`` (ties count half)."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def teacher_on_views(teacher, student, dataset, ids: list[str]) -> dict[str, object]:
    """Teacher accuracy/AUC on raw low-res Z, on g(Z), on the children; patch AUC of its attention on g(Z)."""
    teacher.eval()
    student.eval()
    probs: dict[str, list[np.ndarray]] = {"children": [], "lowres_raw": [], "lowres_projected": []}
    labels, patch_scores, patch_truth = [], [], []
    for slide_id in ids:
        bag = dataset.load(slide_id, hr=True)
        labels.append(int(bag.label))
        batch = collate([bag], hr=True)
        probs["children"].append(teacher.predict_proba(batch)[0].numpy())
        z = batch["features"]  # (1, N, d): models take batched input only
        gz = student.projector(z)
        for name, x in (("lowres_raw", z), ("lowres_projected", gz)):
            out = teacher(x)
            probs[name].append(torch.softmax(out["logits"][0], -1).numpy())
        patch_scores.append(teacher(gz)["attention"][0].numpy())
        patch_truth.append(np.asarray(bag.tumour_fraction) > 0)
    y = np.asarray(labels)
    report: dict[str, object] = {}
    for name, p in probs.items():
        m = classification_metrics(np.stack(p).astype(np.float64), y)
        report[f"teacher_on_{name}"] = {"accuracy": m["accuracy"], "auc": m["auc"]}
    # attention is a softmax per slide: rank within slides by using the per-slide log attention
    scores = np.concatenate([np.log(np.maximum(s, 1e-30)) - np.log(1.0 / len(s)) for s in patch_scores])
    report["patch_auc_teacher_attention_on_projection"] = _auc(np.concatenate(patch_truth), scores)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synth-c16")
    parser.add_argument("--teacher", default="abmil-synth-c16", help="high-res teacher (name, repo, folder)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--stage1-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--selection", default="loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-slides", type=int, default=None, help="seeded subset per split (quick runs)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ds = open_dataset(args.dataset)
    common = dict(epochs=args.epochs, lr=args.lr, selection=args.selection, seed=args.seed)
    common["max_slides"] = args.max_slides
    in_dim = ds.load(ds.slide_ids()[0], hr=False).dim

    torch.manual_seed(args.seed)
    abmil_lr = create_model("abmil", in_dim=in_dim, num_classes=len(ds.class_names))
    lr_result = fit(abmil_lr, ds, progress=False, **common)

    teacher = hub.load(args.teacher)
    lrmil_result = fit_lrmil(ds, teacher, epochs_stage1=args.stage1_epochs, progress=False, **common)
    test_ids = lrmil_result.test_ids
    views = teacher_on_views(teacher, lrmil_result.model, ds, test_ids)

    def row(name: str, m: dict[str, float]) -> str:
        return f"{name:<44} {m['accuracy']:.3f}  {m['auc']:.3f}"

    results = {
        "settings": vars(args),
        "test_slides": len(test_ids),
        "abmil_lowres": lr_result.test_metrics,
        "lrmil_student": lrmil_result.test_metrics,
        "abmil_lowres_best_epoch": lr_result.best_epoch,
        "lrmil_best_epoch": lrmil_result.best_epoch,
        **views,
    }
    print(
        f"{args.dataset}, {len(test_ids)} test slides, {args.epochs} epochs at lr {args.lr}, seed {args.seed}"
    )
    print(f"{'model':<44} {'acc':>5}  {'AUC':>5}")
    print(row("abmil, low-res (view=lr)", lr_result.test_metrics))
    print(row("lrmil student, low-res (teacher " + args.teacher + ")", lrmil_result.test_metrics))
    print(row("teacher on the high-res children", views["teacher_on_children"]))  # type: ignore[arg-type]
    print(row("teacher on raw low-res Z", views["teacher_on_lowres_raw"]))  # type: ignore[arg-type]
    print(row("teacher on projected low-res g(Z)", views["teacher_on_lowres_projected"]))  # type: ignore[arg-type]
    print(
        "patch AUC (tumour vs none) of the teacher's attention on g(Z): "
        f"{views['patch_auc_teacher_attention_on_projection']:.3f}"
    )
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
