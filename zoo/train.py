r"""Training loop of the zoo's MIL models: the papers' recipes, seeded, one slide per step.

:func:`fit` trains a :class:`~zoo.models.base.MILModel` on one fold of a
:class:`~wsigym.data.dataset.SlideDataset` the way ACMIL, ASMIL and HAFED do:

- batch of 1 slide, AdamW, per-iteration half-cosine learning rate from ``lr`` to 0 with no warm-up,

  .. math:: \eta_t = \tfrac{1}{2}\,\eta_0\,\big(1 + \cos(\pi t / T)\big), \quad t = 0..T-1,\ T = E \cdot S_{train};

- gradient-norm clipping where the paper has one (ASMIL: 5.0);
- model selection by one of :data:`SELECTION_RULES` (the weights of the selected epoch are
  restored and the test split is evaluated with them; early stopping only with a ``patience``):

  - ``"loss"`` (default): the lowest validation NLL. It is continuous, so it does not saturate on a
    validation split of 5-20 bags the way accuracy, F1 and AUC do (CLAM's rule);
  - ``"auc"``: the largest validation AUC (LRMIL's rule), ties to the lower validation NLL;
  - ``"f1+auc"``: the largest validation F1 + AUC (ACMIL/ASMIL's rule), ties to the lower NLL;
  - ``"last"``: the last epoch (e.g. after training on train+val).

  Remaining ties (equal score and NLL) go to the **later** epoch. "F1" is the binary F1 of class 1
  for two classes and macro-F1 otherwise; a NaN AUC (a validation split with one class) counts as 0.
  **An empty validation split means "last"**, whatever the rule.

After every optimiser step the trainer calls ``model.after_optimizer_step()`` (ASMIL's EMA anchor).
Randomness: ``torch.manual_seed(seed)`` at the start (dropout, STKIM, token dropping), a
``torch.Generator`` seeded with ``seed`` shuffles the training slides each epoch, and a
``numpy.random.Generator`` picks the ``max_slides`` subsets.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from wsigym.data.bag import SlideBag
from wsigym.data.dataset import SlideDataset
from wsigym.io import atomic_write_json, atomic_write_text
from zoo.batch import collate
from zoo.metrics import classification_metrics
from zoo.models.base import MILModel
from zoo.schedule import BestEpoch, HalfCosineLR

_BASE: dict[str, Any] = {
    "epochs": 50,
    "lr": 1e-4,
    "weight_decay": 1e-5,
    "optimizer": "adamw",
    "schedule": "cosine",  # per-iteration half-cosine to 0
    "warmup": 0,
    "grad_clip": None,  # max gradient norm, or None
    "selection": "loss",  # one of SELECTION_RULES
    "patience": None,  # epochs without a better selection score before stopping, or None
}

#: Training defaults per model family (``mil-models.md``). ``source`` says where each comes from.
RECIPES: dict[str, dict[str, Any]] = {
    "abmil": {**_BASE, "source": "ACMIL repo, ABMIL baseline (ACMIL_GA, n_token 1): AdamW 1e-4, wd 1e-5"},
    "acmil": {**_BASE, "source": "ACMIL README/Step3: AdamW, cosine 1e-4 -> 0, wd 1e-5, 50 epochs, batch 1"},
    "transmil": {
        **_BASE,
        "lr": 2e-4,
        "epochs": 200,
        "patience": 10,
        "source": "TransMIL: 2e-4, wd 1e-5, 200 epochs, patience 10; Lookahead-RAdam replaced by AdamW",
    },
    "asmil": {
        **_BASE,
        "grad_clip": 5.0,
        "source": "ASMIL Step3: AdamW 1e-4, wd 1e-5, half-cosine, 50 epochs, grad clip 5.0",
    },
    "hafed": {
        **_BASE,
        "lr": 4.14e-4,
        "source": "SASHA camelyon_config.yml: AdamW 4.14e-4, wd 1e-5, cosine, 50 epochs",
    },
    "semamil": {
        **_BASE,
        "lr": 2e-4,
        "source": "unpublished; MambaMIL recipe (2e-4, wd 1e-5) with AdamW + cosine (unverified)",
    },
    "lrmil": {
        **_BASE,
        "selection": "auc",
        "source": "unpublished values; LRMIL selects on val AUC; lr/wd/epochs are ACMIL's (unverified)",
    },
    "wisefuse": {**_BASE, "source": "unpublished; ABMIL recipe (unverified)"},
}

DEFAULT_RECIPE: dict[str, Any] = {**_BASE, "source": "default (ACMIL recipe)"}

#: model-selection rules of :func:`fit` (see the module docstring)
SELECTION_RULES = ("loss", "auc", "f1+auc", "last")


def recipe_for(model: MILModel | str) -> dict[str, Any]:
    """The recipe of a family name or model (a copy); :data:`DEFAULT_RECIPE` for unknown families."""
    family = model if isinstance(model, str) else model.family
    return dict(RECIPES.get(family, DEFAULT_RECIPE))


@dataclasses.dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained model with the best epoch's weights restored (in eval mode).
        history: one dict per epoch: ``epoch``, ``lr``, ``train_loss`` and the other loss terms
            (``train_<term>``), ``val_<metric>`` when validated, ``score``, ``seconds``.
        best_epoch: index (0-based) of the selected epoch.
        val_metrics / test_metrics: scalar metrics of the best epoch (``classification_metrics`` keys
            plus ``slides_per_s``); empty when the split is empty.
        seconds: wall-clock training time, evaluation included.
        params: number of parameters of the model.
        flops_per_slide: forward FLOPs averaged over up to 8 test slides (None when none could be counted).
        test_probs / test_labels: ``(S, C)`` probabilities and ``(S,)`` labels of the test split.
        test_ids: the ``S`` test slide ids, in the order of ``test_probs``.
        recipe: the settings actually used.
    """

    model: MILModel
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    seconds: float
    params: int
    flops_per_slide: float | None
    test_probs: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_ids: list[str] = dataclasses.field(default_factory=list)
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)


def _needs_hr(model: MILModel) -> bool:
    return model.input_view in ("hr", "hier") or bool(getattr(model, "needs_hr", False))


class _BagSource:
    """Loads bags of one dataset, keeping low-res-only bags in memory."""

    def __init__(self, dataset: SlideDataset, hr: bool) -> None:
        self.dataset, self.hr = dataset, hr
        self._cache: dict[str, SlideBag] = {}

    def __call__(self, slide_id: str) -> SlideBag:
        if self.hr:
            return self.dataset.load(slide_id, hr=True)
        bag = self._cache.get(slide_id)
        if bag is None:
            bag = self._cache[slide_id] = self.dataset.load(slide_id, hr=False)
        return bag


def _subset(ids: list[str], max_slides: int | None, rng: np.random.Generator) -> list[str]:
    if max_slides is None or len(ids) <= max_slides:
        return ids
    keep = np.sort(rng.choice(len(ids), size=max_slides, replace=False))
    return [ids[i] for i in keep]


def _evaluate_ids(
    model: MILModel,
    load: Callable[[str], SlideBag],
    ids: Sequence[str],
    hr: bool,
    device: str | torch.device,
    progress: bool,
    desc: str,
) -> dict[str, Any]:
    if not ids:
        return {}
    probs, labels = [], []
    start = time.perf_counter()
    for slide_id in tqdm(ids, desc=desc, disable=not progress, leave=False):
        bag = load(slide_id)
        batch = collate([bag], device=device, hr=hr)
        probs.append(model.predict_proba(batch)[0].float().cpu().numpy())
        labels.append(int(bag.label))
    seconds = time.perf_counter() - start
    p, y = np.stack(probs).astype(np.float64), np.asarray(labels, dtype=np.int64)
    out: dict[str, Any] = dict(classification_metrics(p, y))
    out["slides_per_s"] = len(ids) / max(seconds, 1e-12)
    out["probs"], out["labels"] = p, y
    return out


def evaluate_model(
    model: MILModel,
    dataset: SlideDataset,
    split: str = "test",
    fold: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on one split, one slide at a time.

    Returns:
        :func:`zoo.metrics.classification_metrics` keys, ``slides_per_s`` (inference throughput,
        loading included), ``probs`` ``(S, C)`` and ``labels`` ``(S,)`` numpy arrays. Empty dict for
        an empty split.
    """
    hr = _needs_hr(model)
    model.to(device)
    return _evaluate_ids(
        model, _BagSource(dataset, hr), dataset.split(split, fold), hr, device, progress, split
    )


def count_flops(model: MILModel, batch: dict[str, Tensor]) -> float:
    """Floating-point operations of one eval-mode forward pass on ``batch``.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and
    attention kernels; elementwise ops are not counted, as is usual for reported FLOPs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    # Frozen parameters: FlopCounterMode's module tracker hooks every input that requires grad, and a
    # view of a parameter made under no_grad (ASMIL's expanded queries) has no grad_fn to hook.
    model.eval().requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.predict(batch)
        return float(counter.get_total_flops())
    finally:
        model.train(was_training)
        for param, flag in zip(model.parameters(), requires_grad, strict=True):
            param.requires_grad_(flag)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _finite(value: Any, default: float) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else default


def selection_key(metrics: dict[str, Any], rule: str, epoch: int) -> tuple[float, ...]:
    """Sort key of one validated epoch under ``rule`` (larger is better; see the module docstring).

    ``(score, -val NLL, epoch)`` for ``"auc"`` / ``"f1+auc"``, ``(-val NLL, epoch)`` for ``"loss"``,
    ``(epoch,)`` for ``"last"`` or empty ``metrics``: ties go to the lower loss, then the later epoch.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"selection must be one of {SELECTION_RULES}, got {rule!r}")
    if rule == "last" or not metrics:
        return (float(epoch),)
    neg_nll = -_finite(metrics.get("nll"), math.inf)
    if rule == "loss":
        return (neg_nll, float(epoch))
    f1 = metrics.get("f1", metrics.get("f1_macro"))
    score = _finite(metrics.get("auc"), 0.0) + (_finite(f1, 0.0) if rule == "f1+auc" else 0.0)
    return (score, neg_nll, float(epoch))


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if not isinstance(v, np.ndarray)}


def _train_step(
    model: MILModel,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    clip: float | None,
    batch: dict[str, Tensor],
    where: str,
) -> dict[str, float]:
    """One optimizer step on a collated ``batch``; returns the scalar loss terms (``loss`` included).

    Raises FloatingPointError naming ``where`` (epoch and slide) on a non-finite loss.
    """
    terms = model.loss(batch)
    loss = terms["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"fit: non-finite loss {loss.item()} at {where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, float(clip))
    optimizer.step()
    model.after_optimizer_step()
    return {
        name: float(value.detach())
        for name, value in terms.items()
        if name != "logits" and isinstance(value, Tensor) and value.numel() == 1
    }


def fit(
    model: MILModel,
    dataset: SlideDataset,
    *,
    fold: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    max_slides: int | None = None,
    log_dir: str | Path | None = None,
    eval_every: int = 1,
    grad_clip: float | None = None,
    patience: int | None = None,
    selection: str | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset``'s fold ``fold`` with its family recipe (see the module docstring).

    Args:
        epochs, lr, weight_decay, grad_clip, patience, selection: override the recipe
            (:data:`RECIPES`); None keeps the recipe's value. ``patience``: stop after this many
            validated epochs without a newly selected one.
        seed: seeds torch's global RNG, the shuffling ``torch.Generator`` and the subset ``numpy`` RNG.
        max_slides: use at most this many slides of each split (a seeded subset), for quick runs.
        log_dir: write TensorBoard scalars (loss per step, metrics per epoch) there.
        eval_every: validate every this many epochs (and always after the last one).

    Returns:
        :class:`TrainResult`, with the model holding the best validation epoch's weights.

    Raises:
        ValueError: for an empty training split or a non-positive ``epochs``/``eval_every``.
    """
    recipe = recipe_for(model)
    for key, value in {
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "grad_clip": grad_clip,
        "patience": patience,
        "selection": selection,
    }.items():
        if value is not None:
            recipe[key] = value
    if recipe["selection"] not in SELECTION_RULES:
        raise ValueError(f"fit: selection must be one of {SELECTION_RULES}, got {recipe['selection']!r}")
    if recipe["patience"] is not None and int(recipe["patience"]) < 1:
        raise ValueError(f"fit: patience must be >= 1, got {recipe['patience']}")
    n_epochs = int(recipe["epochs"])
    if n_epochs < 1:
        raise ValueError(f"fit: epochs must be >= 1, got {n_epochs}")
    if eval_every < 1:
        raise ValueError(f"fit: eval_every must be >= 1, got {eval_every}")
    if recipe["optimizer"] != "adamw" or recipe["schedule"] != "cosine" or recipe["warmup"]:
        raise ValueError(f"fit: recipe {recipe} asks for something other than AdamW + cosine, no warm-up")

    torch.manual_seed(seed)
    shuffle_gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    hr = _needs_hr(model)
    load = _BagSource(dataset, hr)
    ids = {s: _subset(dataset.split(s, fold), max_slides, rng) for s in ("train", "val", "test")}
    if not ids["train"]:
        raise ValueError(f"fit: dataset {dataset.name!r} fold {fold} has no training slides")
    rule = recipe["selection"] if ids["val"] else "last"  # no validation split: the last epoch
    recipe["selection_used"] = rule

    model.prepare_for(dataset)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = float(recipe["lr"])
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=float(recipe["weight_decay"]))
    schedule = HalfCosineLR(optimizer, base_lr, n_epochs * len(ids["train"]))
    clip = recipe["grad_clip"]

    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(log_dir))

    history: list[dict[str, float]] = []
    best = BestEpoch()
    best_val: dict[str, Any] = {}
    start = time.perf_counter()
    bar = tqdm(range(n_epochs), desc=f"{model.family} {dataset.name}", disable=not progress)
    try:
        for epoch in bar:
            epoch_start = time.perf_counter()
            model.train()
            order = torch.randperm(len(ids["train"]), generator=shuffle_gen).tolist()
            sums: dict[str, float] = {}
            for i in tqdm(order, desc=f"epoch {epoch}", disable=not progress, leave=False):
                lr_now = schedule.next()
                batch = collate([load(ids["train"][i])], device=device, hr=hr)
                where = f"epoch {epoch}, slide {ids['train'][i]!r}"
                terms = _train_step(model, optimizer, params, clip, batch, where)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value
                if writer is not None:
                    writer.add_scalar("train/loss_step", terms["loss"], schedule.step)
                    writer.add_scalar("train/lr", lr_now, schedule.step)
            record: dict[str, float] = {"epoch": float(epoch), "lr": lr_now}
            record.update({f"train_{k}": v / len(order) for k, v in sums.items()})

            if epoch % eval_every == 0 or epoch == n_epochs - 1:
                val = _evaluate_ids(model, load, ids["val"], hr, device, False, "val") if ids["val"] else {}
                record.update({f"val_{k}": v for k, v in _scalars(val).items()})
                key = selection_key(val, rule, epoch)
                record["score"] = key[0]  # the rule's primary value (loss: -val NLL; last: epoch)
                if best.offer(key, epoch, model):
                    best_val = val
            record["seconds"] = time.perf_counter() - epoch_start
            history.append(record)
            if writer is not None:
                for k, v in record.items():
                    if k != "epoch":
                        writer.add_scalar(k.replace("_", "/", 1), v, epoch)
            bar.set_postfix(
                loss=f"{record.get('train_loss', float('nan')):.3f}",
                val=f"{record.get('score', float('nan')):.3f}",
                best=best.epoch,
            )
            if recipe["patience"] is not None and best.stale >= int(recipe["patience"]):
                break
    finally:
        if writer is not None:
            writer.close()

    best.restore(model)
    model.eval()
    test = _evaluate_ids(model, load, ids["test"], hr, device, progress, "test")
    seconds = time.perf_counter() - start

    flops = []
    for slide_id in (ids["test"] or ids["val"] or ids["train"])[:8]:
        try:
            flops.append(count_flops(model, collate([load(slide_id)], device=device, hr=hr)))
        except Exception:  # some ops are not countable on some backends; FLOPs are then unknown
            flops = []
            break
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best.epoch,
        val_metrics=_scalars(best_val),
        test_metrics=_scalars(test),
        seconds=seconds,
        params=model.num_parameters(),
        flops_per_slide=float(np.mean(flops)) if flops else None,
        test_probs=test.get("probs"),
        test_labels=test.get("labels"),
        test_ids=list(ids["test"]),
        recipe={k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()},
    )


def metrics_record(
    result: TrainResult, *, architecture: str, dataset: SlideDataset, fold: int, seed: int
) -> dict:
    """The JSON content of ``metrics.json`` for one training run (read by :mod:`zoo.results`)."""
    return {
        "architecture": architecture,
        "dataset": dataset.name,
        "class_names": list(dataset.class_names),
        "fold": fold,
        "seed": seed,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "val": result.val_metrics,
        "test": result.test_metrics,
        "params": result.params,
        "flops_per_slide": result.flops_per_slide,
        "seconds": result.seconds,
        "recipe": result.recipe,
        "history": result.history,
    }


def train_and_save(
    architecture: str,
    dataset: SlideDataset,
    *,
    out_dir: str | Path,
    fold: int = 0,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    setup: Callable[[MILModel], Any] | None = None,
    **fit_kwargs: Any,
) -> Path:
    """Build ``architecture`` for ``dataset``, :func:`fit` it and save it to ``out_dir``.

    ``in_dim`` comes from the first slide's features (``vlm_dim`` from its ``vlm`` view, for models that
    have one) and ``num_classes`` from ``dataset.class_names``
    (``config`` may override other fields). The model is built after ``torch.manual_seed(seed)``, so the
    whole run is reproducible. ``setup(model)`` runs on the built model before training (e.g. WISE-FUSE's
    text embeddings from an open_clip model). Writes the weights and card with
    :func:`zoo.hub.save_pretrained`, then replaces the hub's ``metrics.json`` by the full record of the run (:func:`metrics_record`: its
    ``val``/``test`` keys are what the hub wrote, plus params, FLOPs, time, recipe and history).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from zoo.registry import create_model, model_class

    out = Path(out_dir)
    ids = dataset.slide_ids()
    if not ids:
        raise ValueError(f"train_and_save: dataset {dataset.name!r} has no slides")
    first = dataset.load(ids[0], hr=False)
    overrides: dict[str, Any] = {"in_dim": first.dim, "num_classes": len(dataset.class_names)}
    fields = {f.name for f in dataclasses.fields(model_class(architecture).config_class)}
    if "vlm_dim" in fields and "vlm" in first.views:  # e.g. WISE-FUSE: the width of the VLM view
        overrides["vlm_dim"] = int(first.views["vlm"].shape[-1])
    overrides.update(config or {})
    torch.manual_seed(seed)
    model = create_model(architecture, **overrides)
    if not isinstance(model, MILModel):
        raise TypeError(f"train_and_save: {architecture!r} is not a MIL model")
    if setup is not None:
        setup(model)
    result = fit(model, dataset, fold=fold, seed=seed, **fit_kwargs)
    return save_run(result, out, architecture=architecture, dataset=dataset, fold=fold, seed=seed)


def save_run(
    result: TrainResult,
    out_dir: str | Path,
    *,
    architecture: str,
    dataset: SlideDataset,
    fold: int,
    seed: int,
) -> Path:
    """Save a trained run: weights + card (:func:`zoo.hub.save_pretrained`), the full ``metrics.json``
    and the per-slide test probabilities ``test_predictions.csv`` (:func:`write_predictions`).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from zoo import hub

    out = Path(out_dir)
    record = metrics_record(result, architecture=architecture, dataset=dataset, fold=fold, seed=seed)
    hub.save_pretrained(
        result.model,
        out,
        metrics={"val": result.val_metrics, "test": result.test_metrics},
        dataset_name=dataset.name,
        training={k: v for k, v in record.items() if k not in ("history", "val", "test")},
    )
    atomic_write_json(out / "metrics.json", record, sort_keys=True)
    if result.test_probs is not None and result.test_labels is not None:
        write_predictions(
            out / PREDICTIONS_NAME,
            result.test_ids,
            result.test_probs,
            result.test_labels,
            dataset.class_names,
        )
    return out


#: per-slide test probabilities of a run folder
PREDICTIONS_NAME = "test_predictions.csv"


def write_predictions(
    path: str | Path,
    slide_ids: Sequence[str],
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
) -> Path:
    """Write ``slide_id,label,prob_<class>...`` (one row per slide; ``label`` is the class name) atomically.

    Args:
        probs: ``(S, C)`` class probabilities; labels: ``(S,)`` class indices.
    """
    probs = np.asarray(probs)
    if len(slide_ids) != len(probs) or len(labels) != len(probs) or probs.shape[1] != len(class_names):
        raise ValueError(
            f"write_predictions: {len(slide_ids)} ids, {len(labels)} labels and probabilities "
            f"{probs.shape} do not match {len(class_names)} classes"
        )
    lines = [",".join(["slide_id", "label", *(f"prob_{c}" for c in class_names)])]
    for slide_id, label, row in zip(slide_ids, labels, probs):
        lines.append(",".join([slide_id, class_names[int(label)], *(f"{float(p):.6g}" for p in row)]))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)
