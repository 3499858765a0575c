"""How well attention-MIL reads the high-res vs the low-res features of synth-c16.

Measured, never assumed. :func:`train_views` trains, with the zoo's own trainer (:func:`zoo.train.fit`,
the ABMIL recipe, fold 0):

- ``hr``: ABMIL over all valid high-res children of a slide (``view="hr"``, full information);
- ``lr``: ABMIL over the low-res patches only (``view="lr"``);

and evaluates two zoom references with the trained ``lr`` model on the test split, where the rows of
``ceil(zoom_fraction * N)`` chosen low-res patches are replaced by the mean of their valid children's
high-res features (what a zoom reveals, in the low-res state format) before classifying:

- ``attention_zoom``: the patches the ``lr`` model attends to most (an honest, non-oracle agent);
- ``oracle_zoom``: the patches with the largest ground-truth tumour fraction (ties, e.g. every patch of
  a negative slide, broken by the ``lr`` attention) - an upper-bound-style reference.

:func:`wsigym.calibration.calibrate.calibrate` puts the result into the calibration report.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wsigym.data.bag import SlideBag
from wsigym.data.synth.dataset import SynthC16
from zoo.batch import collate
from zoo.metrics import classification_metrics


def zoomed_state(bag: SlideBag, rows: np.ndarray) -> np.ndarray:
    """``Z`` with ``rows`` replaced by the mean of their valid children's ``U``: ``(N, d)`` float32."""
    z = bag.features.copy()
    if len(rows):
        mask = bag.hr_mask[rows].astype(np.float32)[..., None]  # (R, k, 1)
        z[rows] = (bag.hr_features[rows] * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
    return z


@torch.no_grad()
def evaluate_zoom(
    model: Any, dataset: SynthC16, fold: int = 0, zoom_fraction: float = 0.2, progress: bool = True
):
    """Test metrics of a trained low-res ``model`` after attention-chosen and oracle-chosen zooms.

    Returns:
        ``{"attention_zoom": metrics, "oracle_zoom": metrics, "oracle_zoom_tumour_hit": mean share of a
        positive slide's tumour patches covered by the oracle zooms}``.
    """
    model.eval()
    probs: dict[str, list[np.ndarray]] = {"attention_zoom": [], "oracle_zoom": []}
    labels, hits = [], []
    for sid in tqdm(dataset.split("test", fold), desc="zoom references", disable=not progress, leave=False):
        bag = dataset.load(sid, hr=True)
        batch = collate([bag], hr=False)
        att = model.predict(batch)["attention"][0].cpu().numpy()[: bag.n]
        budget = math.ceil(zoom_fraction * bag.n)
        by_att = np.argsort(-att, kind="stable")[:budget]
        by_truth = np.lexsort((-att, -bag.tumour_fraction))[:budget]
        for key, rows in (("attention_zoom", by_att), ("oracle_zoom", by_truth)):
            b = collate([bag], hr=False)
            b["features"] = torch.from_numpy(zoomed_state(bag, rows))[None]
            probs[key].append(torch.softmax(model.predict(b)["logits"], -1)[0].cpu().numpy())
        labels.append(bag.label)
        if bag.label == 1:
            tum = bag.tumour_fraction > 0
            hits.append(float(tum[by_truth].sum() / max(1, tum.sum())))
    out: dict[str, Any] = {k: classification_metrics(np.stack(v), np.array(labels)) for k, v in probs.items()}
    out["oracle_zoom_tumour_hit"] = float(np.mean(hits)) if hits else float("nan")
    return out


def train_views(
    dataset: SynthC16,
    epochs: int = 3,
    seed: int = 0,
    fold: int = 0,
    zoom_fraction: float = 0.2,
    progress: bool = True,
    lr: float = 1e-3,
) -> dict[str, Any]:
    """Train hr- and lr-ABMIL on ``fold`` and evaluate the zoom references (see the module docstring).

    ``lr`` replaces the ABMIL recipe's 1e-4 (tuned for 50 epochs): calibration runs a few epochs, and at
    1e-4 three epochs are not enough for attention to find small metastases among ~18k children.

    Returns:
        ``{"models": {name: {"test": metrics, ...}}, "oracle_zoom_tumour_hit": float}``.
    """
    import zoo
    from zoo.train import fit

    models: dict[str, Any] = {}
    trained = {}
    for view in ("hr", "lr"):
        start = time.perf_counter()
        model = zoo.create_model("abmil", view=view, in_dim=dataset.config.dim)
        result = fit(model, dataset, fold=fold, epochs=epochs, lr=lr, seed=seed, progress=progress)
        trained[view] = result.model
        models[f"abmil_{view}"] = {
            "test": {k: v for k, v in result.test_metrics.items() if isinstance(v, float | int)},
            "best_epoch": result.best_epoch,
            "seconds": round(time.perf_counter() - start, 1),
        }
    zoom = evaluate_zoom(trained["lr"], dataset, fold, zoom_fraction, progress)
    models["abmil_lr_attention_zoom"] = {"test": zoom["attention_zoom"]}
    models["abmil_lr_oracle_zoom"] = {"test": zoom["oracle_zoom"]}
    return {"models": models, "oracle_zoom_tumour_hit": zoom["oracle_zoom_tumour_hit"]}
