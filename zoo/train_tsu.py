r"""Training of the TSU update network ``f_S`` (SASHA step 5), by regression onto frozen HAFED features.

For every slide, the oracle rows ``V = HAFED.aggregate(U)`` are computed once in eval mode (frozen,
deterministic, children masked by ``hr_mask``). An iteration visits the training slides in a seeded
random order; for each slide it draws ``anchors_per_slide`` random anchors ``a`` among the patches
that have at least one similar patch, takes the similar set

.. math:: C(a) = \{ i \ne a : \cos(Z_i, Z_a) \ge \tau \}

on the **low-res features** ``Z`` (SASHA's ``|cos|`` by default, ``similarity="abs_cosine"``;
``"cosine"`` is signed), and takes one AdamW step on

.. math:: \mathcal{L} = \operatorname{mean}_{a,\, i \in C(a)} \big\| f_S([V(a), Z(a), Z(i)]) - V(i) \big\|^2 / d .

The inputs are ``Z`` rows, not evolving states, as in SASHA's ``step5_tsu_training.py``: each row is
TSU-updated at most once, so a row the environment can still update holds ``S_t(i) = Z(i)``; the
anchor input is ``Z(a)`` in training but ``S_t(a)`` in SASHA's environment (``update="tsu"``), which
differs when ``a`` was TSU-updated earlier (SASHA pitfall 7; ``update="tsu-lowres"`` removes that
shift). The defaults are SASHA's architecture and CAMELYON16 recipe (``config/camelyon_tsu_config.yml``:
AdamW lr 4e-5, weight decay 4e-4, ``|cos| >= 0.95``; 200 epochs for SASHA-0.1, 1000 for SASHA-0.2),
except ``anchors_per_slide`` (SASHA: 1). The learning rate follows a per-iteration half-cosine from ``lr`` to 0 (no warm-up);
the epoch with the lowest validation MSE is kept.

Validation uses a fixed, seeded set of anchors per slide (``eval_anchors_per_slide``), and reports the
MSE of ``f_S`` next to two honest baselines on the same pairs: ``no_update`` (predict ``V(i)`` by
``Z(i)``, i.e. leave the row as it is) and ``copy_anchor`` (predict ``V(i)`` by ``V(a)``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from wsigym.data.dataset import SlideDataset
from wsigym.errors import DataError
from zoo.models.hafed import HAFED
from zoo.models.tsu import SIMILARITIES, TSU, TSUConfig
from zoo.schedule import BestEpoch, HalfCosineLR


@dataclasses.dataclass
class _Slide:
    """Low-res features ``z (N, d)``, oracle rows ``v (N, d)`` and which rows have a similar row."""

    slide_id: str
    z: Tensor
    v: Tensor
    anchors: Tensor  # (A,) indices of patches with a non-empty similar set


@dataclasses.dataclass
class TSUResult:
    """What :func:`fit_tsu` returns.

    Attributes:
        model: the trained ``f_S`` with the best epoch's weights (eval mode).
        val_mse: validation MSE of ``f_S`` at the best epoch.
        baselines: validation (and test, when the split has pairs) MSE of ``tsu``, ``no_update``
            (``Z(i)``) and ``copy_anchor`` (``V(a)``), keys ``val_<name>`` / ``test_<name>``, plus the
            pair counts ``val_pairs`` / ``test_pairs``.
        history: one dict per epoch (``epoch``, ``lr``, ``train_mse``, ``val_mse``, ``seconds``).
        best_epoch: 0-based index of the selected epoch.
        seconds: wall-clock time, feature extraction included.
        recipe: the settings actually used.
    """

    model: TSU
    val_mse: float
    baselines: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    recipe: dict[str, Any]


def _cosine(z: Tensor, rows: Tensor, similarity: str) -> Tensor:
    """``cos(z_j, z_r)`` for every ``j`` and anchor ``r``: ``(len(rows), N)``."""
    zn = F.normalize(z, dim=-1)
    cos = zn[rows] @ zn.T
    return cos.abs() if similarity == "abs_cosine" else cos


def _similar_pairs(z: Tensor, anchors: Tensor, tau: float, similarity: str) -> tuple[Tensor, Tensor]:
    """All pairs ``(a, i)`` with ``a`` in ``anchors``, ``i != a`` and ``sim(z_i, z_a) >= tau``."""
    hit = _cosine(z, anchors, similarity) >= tau
    hit[torch.arange(len(anchors)), anchors] = False
    rows, cols = hit.nonzero(as_tuple=True)
    return anchors[rows], cols


def _prepare(
    hafed: HAFED,
    dataset: SlideDataset,
    ids: Sequence[str],
    tau: float,
    similarity: str,
    device: torch.device,
    progress: bool,
    desc: str,
) -> list[_Slide]:
    slides = []
    for slide_id in tqdm(ids, desc=desc, disable=not progress, leave=False):
        bag = dataset.load(slide_id, hr=True)
        if bag.hr_features is None:
            raise DataError(
                f"{dataset.name}:{slide_id}", "TSU training needs high-res features (hr_features)"
            )
        u = torch.from_numpy(np.asarray(bag.hr_features, dtype=np.float32)).to(device)
        cm = None if bag.hr_mask is None else torch.from_numpy(np.asarray(bag.hr_mask)).to(device)
        with torch.no_grad():
            v = hafed.aggregate(u, cm)
        z = torch.from_numpy(np.asarray(bag.features, dtype=np.float32)).to(device)
        has = torch.zeros(len(z), dtype=torch.bool, device=device)
        for start in range(0, len(z), 1024):  # chunks keep the (chunk, N) similarity small
            rows = torch.arange(start, min(start + 1024, len(z)), device=device)
            hit = _cosine(z, rows, similarity) >= tau
            hit[torch.arange(len(rows)), rows] = False
            has[rows] = hit.any(1)
        slides.append(_Slide(slide_id, z, v, has.nonzero().squeeze(-1)))
    return slides


def _eval_pairs(
    slides: Sequence[_Slide], per_slide: int, tau: float, similarity: str, seed: int
) -> list[tuple[int, Tensor, Tensor]]:
    """A fixed seeded set of ``(slide index, a, i)`` pairs for validation/test."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s_idx, slide in enumerate(slides):
        if len(slide.anchors) == 0:
            continue
        pick = torch.randperm(len(slide.anchors), generator=gen)[:per_slide].to(slide.anchors.device)
        a, i = _similar_pairs(slide.z, slide.anchors[pick], tau, similarity)
        out.append((s_idx, a, i))
    return out


@torch.no_grad()
def _pair_mse(
    tsu: TSU, slides: Sequence[_Slide], pairs: list[tuple[int, Tensor, Tensor]]
) -> dict[str, float]:
    """MSE of ``tsu``, ``no_update`` and ``copy_anchor`` over ``pairs`` (mean over pairs and dims)."""
    was_training = tsu.training
    tsu.eval()
    sums = {"tsu": 0.0, "no_update": 0.0, "copy_anchor": 0.0}
    n = 0
    for s_idx, a, i in pairs:
        s = slides[s_idx]
        for start in range(0, len(a), 8192):
            aa, ii = a[start : start + 8192], i[start : start + 8192]
            target = s.v[ii]
            pred = tsu(s.v[aa], s.z[aa], s.z[ii])
            sums["tsu"] += float(((pred - target) ** 2).mean(-1).sum())
            sums["no_update"] += float(((s.z[ii] - target) ** 2).mean(-1).sum())
            sums["copy_anchor"] += float(((s.v[aa] - target) ** 2).mean(-1).sum())
            n += len(aa)
    tsu.train(was_training)
    out = {k: (v / n if n else float("nan")) for k, v in sums.items()}
    out["pairs"] = float(n)
    return out


def fit_tsu(
    hafed: HAFED,
    dataset: SlideDataset,
    *,
    fold: int = 0,
    tau: float = 0.95,
    similarity: str = "abs_cosine",
    epochs: int = 200,
    lr: float = 4e-5,
    weight_decay: float = 4e-4,
    anchors_per_slide: int = 4,
    max_pairs_per_step: int = 4096,
    eval_anchors_per_slide: int = 16,
    hidden: int | None = None,
    residual: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    max_slides: int | None = None,
) -> TSUResult:
    """Train ``f_S`` on ``dataset``'s fold ``fold`` against a frozen ``hafed`` (see the module docstring).

    Args:
        hafed: trained HAFED; only :meth:`~zoo.models.hafed.HAFED.aggregate` is used, in eval mode.
        tau, similarity: similar-set rule (``cos >= tau`` on ``Z``; ``"abs_cosine"`` uses ``|cos|``).
            Both are stored in the TSU config so the environment can use the same.
        epochs: passes over the training slides (SASHA CAMELYON16: 200 for SASHA-0.1, 1000 for 0.2).
        lr, weight_decay: AdamW, half-cosine from ``lr`` to 0 per iteration (SASHA C16: 4e-5 / 4e-4).
        anchors_per_slide: random anchors per slide and iteration (SASHA: 1).
        max_pairs_per_step: cap on the ``(a, i)`` pairs of one step (a seeded random subset beyond it).
        eval_anchors_per_slide: fixed anchors per validation/test slide.
        hidden: MLP hidden width (None: ``2 * d``).
        residual: the residual ``f_S`` (:class:`~zoo.models.tsu.TSUConfig`), starting from "copy ``V(a)``".
        seed: seeds the TSU initialisation, anchor draws, slide order and evaluation anchors.
        max_slides: use at most this many slides per split (first ones, for quick runs).

    Returns:
        :class:`TSUResult` (the model holds the weights of the epoch with the lowest validation MSE;
        the last epoch when no validation pair exists).

    Raises:
        ValueError: for bad arguments, or when no training slide has a similar pair at ``tau``.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"fit_tsu: similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if epochs < 1 or anchors_per_slide < 1 or max_pairs_per_step < 1:
        raise ValueError("fit_tsu: epochs, anchors_per_slide and max_pairs_per_step must be >= 1")
    if not -1.0 <= tau <= 1.0:
        raise ValueError(f"fit_tsu: tau must be in [-1, 1], got {tau}")
    start_time = time.perf_counter()
    device = torch.device(device)
    hafed = hafed.to(device).eval()
    for p in hafed.parameters():
        p.requires_grad_(False)
    ids = {s: dataset.split(s, fold)[:max_slides] for s in ("train", "val", "test")}
    data = {
        s: _prepare(hafed, dataset, ids[s], tau, similarity, device, progress, f"HAFED V ({s})")
        for s in ("train", "val", "test")
    }
    train = [s for s in data["train"] if len(s.anchors)]
    if not train:
        raise ValueError(
            f"fit_tsu: no training slide of {dataset.name!r} fold {fold} has two patches with "
            f"{similarity} similarity >= {tau}; lower tau"
        )
    val_pairs = _eval_pairs(data["val"], eval_anchors_per_slide, tau, similarity, seed + 1)
    test_pairs = _eval_pairs(data["test"], eval_anchors_per_slide, tau, similarity, seed + 2)

    torch.manual_seed(seed)
    d = hafed.config.in_dim
    tsu = TSU(TSUConfig(in_dim=d, hidden=hidden, tau=tau, similarity=similarity, residual=residual)).to(
        device
    )
    optimizer = torch.optim.AdamW(tsu.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    schedule = HalfCosineLR(optimizer, lr, epochs * len(train))
    history: list[dict[str, float]] = []
    best = BestEpoch()
    bar = tqdm(range(epochs), desc=f"tsu {dataset.name}", disable=not progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        tsu.train()
        total, count = 0.0, 0
        for s_idx in torch.randperm(len(train), generator=gen).tolist():
            slide = train[s_idx]
            lr_now = schedule.next()
            pick = torch.randint(len(slide.anchors), (anchors_per_slide,), generator=gen)
            a, i = _similar_pairs(slide.z, slide.anchors[pick.to(slide.anchors.device)], tau, similarity)
            if len(a) > max_pairs_per_step:
                keep = torch.randperm(len(a), generator=gen)[:max_pairs_per_step].to(a.device)
                a, i = a[keep], i[keep]
            loss = F.mse_loss(tsu(slide.v[a], slide.z[a], slide.z[i]), slide.v[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
        record = {"epoch": float(epoch), "lr": lr_now, "train_mse": total / max(count, 1)}
        val_mse = _pair_mse(tsu, data["val"], val_pairs)["tsu"] if val_pairs else float("nan")
        record["val_mse"] = val_mse
        score = val_mse if math.isfinite(val_mse) else -float(epoch)  # no val pairs: keep the last
        best.offer((-score,), epoch, tsu)  # lowest score wins
        record["seconds"] = time.perf_counter() - epoch_start
        history.append(record)
        bar.set_postfix(train=f"{record['train_mse']:.4f}", val=f"{val_mse:.4f}", best=best.epoch)

    best.restore(tsu)
    tsu.eval()
    baselines: dict[str, float] = {}
    for split, pairs in (("val", val_pairs), ("test", test_pairs)):
        if pairs:
            baselines.update({f"{split}_{k}": v for k, v in _pair_mse(tsu, data[split], pairs).items()})
    recipe = {
        "fold": fold,
        "tau": tau,
        "similarity": similarity,
        "residual": residual,
        "inputs": "[V(a), Z(a), Z(i)] -> V(i); similar set on Z",
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": "adamw",
        "schedule": "per-iteration half-cosine to 0, no warm-up",
        "anchors_per_slide": anchors_per_slide,
        "max_pairs_per_step": max_pairs_per_step,
        "eval_anchors_per_slide": eval_anchors_per_slide,
        "max_slides": max_slides,
        "seed": seed,
        "train_slides_with_pairs": len(train),
        "train_slides": len(data["train"]),
        "selection": "lowest validation MSE",
    }
    return TSUResult(
        model=tsu,
        val_mse=baselines.get("val_tsu", float("nan")),
        baselines=baselines,
        history=history,
        best_epoch=best.epoch,
        seconds=time.perf_counter() - start_time,
        recipe=recipe,
    )


def train_and_save_tsu(
    hafed_name_or_path: str | Path | HAFED,
    dataset: SlideDataset,
    out_dir: str | Path,
    *,
    fold: int = 0,
    seed: int = 0,
    notes: str | None = None,
    **fit_kwargs: Any,
) -> Path:
    """Load HAFED (a pretrained name, Hub repo, folder, or a model), :func:`fit_tsu` and save the TSU.

    Writes ``config.json`` + ``model.safetensors`` (+ card) with :func:`zoo.hub.save_pretrained` and a
    ``metrics.json`` with the MSEs, baselines, recipe and history. ``notes`` (free text, e.g. why this
    ``tau``) is stored with the training facts.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from wsigym.io import atomic_write_json
    from zoo import hub

    if isinstance(hafed_name_or_path, HAFED):
        hafed, hafed_source = hafed_name_or_path, "in-memory HAFED"
    else:
        hafed = hub.load(str(hafed_name_or_path))
        hafed_source = str(hafed_name_or_path)
        if not isinstance(hafed, HAFED):
            raise TypeError(f"train_and_save_tsu: {hafed_source!r} is a {type(hafed).__name__}, not HAFED")
    result = fit_tsu(hafed, dataset, fold=fold, seed=seed, **fit_kwargs)
    out = Path(out_dir)
    record = {
        "architecture": "tsu",
        "dataset": dataset.name,
        "fold": fold,
        "seed": seed,
        "hafed": hafed_source,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "val_mse": result.val_mse,
        "mse": result.baselines,
        "params": result.model.num_parameters(),
        "seconds": result.seconds,
        "recipe": result.recipe,
        "history": result.history,
    }
    if notes:
        record["notes"] = notes
    names = {"tsu": "mse", "no_update": "mse_no_update", "copy_anchor": "mse_copy_anchor", "pairs": "pairs"}
    card_metrics = {
        split: {
            names[k]: result.baselines[f"{split}_{k}"] for k in names if f"{split}_{k}" in result.baselines
        }
        for split in ("val", "test")
    }
    hub.save_pretrained(
        result.model,
        out,
        metrics={k: v for k, v in card_metrics.items() if v},
        dataset_name=dataset.name,
        training={k: v for k, v in record.items() if k != "history"},
    )
    atomic_write_json(out / "metrics.json", record, sort_keys=True)
    return out
