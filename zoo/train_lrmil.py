"""Train LRMIL (:mod:`zoo.models.lrmil`): stage 1 fits the low-res -> high-res projector, stage 2 the student.

:func:`train_projector` is stage 1 (one slide per step, AdamW, the epoch with the lowest mean loss kept);
:func:`fit_lrmil` runs it and then :func:`zoo.train.fit` on the student with the teacher attached.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from tqdm.auto import tqdm

from wsigym.data.dataset import SlideDataset
from zoo.batch import collate
from zoo.models.base import MILModel
from zoo.models.lrmil import LRMIL
from zoo.registry import create_model
from zoo.train import TrainResult, fit


def train_projector(
    model: LRMIL,
    dataset: SlideDataset,
    *,
    fold: int = 0,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    max_slides: int | None = None,
) -> list[float]:
    """Stage 1: fit ``model.projector`` on the training split (one slide per step, AdamW).

    Keeps the projector weights of the epoch with the lowest mean training loss (LRMIL's stage-1
    checkpoint rule). Returns the mean loss per epoch.
    """
    if epochs < 1:
        raise ValueError(f"train_projector: epochs must be >= 1, got {epochs}")
    ids = dataset.split("train", fold)
    if max_slides is not None:
        ids = ids[:max_slides]
    if not ids:
        raise ValueError(f"train_projector: dataset {dataset.name!r} fold {fold} has no training slides")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.projector.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[float] = []
    best, best_state = math.inf, copy.deepcopy(model.projector.state_dict())
    for epoch in range(epochs):
        order = torch.randperm(len(ids), generator=gen).tolist()
        losses = []
        for j in tqdm(
            order, desc=f"LRMIL stage 1, epoch {epoch + 1}/{epochs}", disable=not progress, leave=False
        ):
            batch = collate([dataset.load(ids[j], hr=True)], device=device)
            loss = model.projector_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        mean = sum(losses) / len(losses)
        history.append(mean)
        if mean < best:
            best, best_state = mean, copy.deepcopy(model.projector.state_dict())
    model.projector.load_state_dict(best_state)
    return history


def fit_lrmil(
    dataset: SlideDataset,
    teacher: MILModel | None,
    *,
    fold: int = 0,
    seed: int = 0,
    epochs_stage1: int = 10,
    epochs_stage2: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    max_slides: int | None = None,
    stage1_lr: float = 1e-3,
    config: dict[str, Any] | None = None,
    **fit_kwargs: Any,
) -> TrainResult:
    """Train an LRMIL student: stage 1 (:func:`train_projector`) then stage 2 (:func:`zoo.train.fit`).

    Args:
        teacher: a trained high-res :class:`MILModel` (e.g. ``ABMIL(view="hr")``), or None (uniform
            child weights, CE only).
        config: :class:`LRMILConfig` overrides; ``in_dim``/``num_classes`` default to the dataset's.
        epochs_stage2: None keeps the ``lrmil`` recipe's epochs (``epochs`` in ``fit_kwargs`` also sets it).
        fit_kwargs: passed to :func:`zoo.train.fit` (``lr``, ``weight_decay``, ``log_dir``, ...).

    Returns:
        :class:`~zoo.train.TrainResult` whose ``model`` is the student with the best validation epoch's
        weights (the teacher stays attached; it is not part of the student's state dict).
    """
    overrides = dict(config or {})
    if "in_dim" not in overrides:
        overrides["in_dim"] = dataset.load(dataset.split("train", fold)[0], hr=False).dim
    overrides.setdefault("num_classes", len(dataset.class_names))
    torch.manual_seed(seed)
    model = create_model("lrmil", **overrides)
    assert isinstance(model, LRMIL)
    model.set_teacher(teacher)
    train_projector(
        model,
        dataset,
        fold=fold,
        epochs=epochs_stage1,
        lr=stage1_lr,
        seed=seed,
        device=device,
        progress=progress,
        max_slides=max_slides,
    )
    epochs_stage2 = fit_kwargs.pop("epochs", epochs_stage2)
    result = fit(
        model,
        dataset,
        fold=fold,
        epochs=epochs_stage2,
        seed=seed,
        device=device,
        progress=progress,
        max_slides=max_slides,
        **fit_kwargs,
    )
    return result
