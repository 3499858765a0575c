"""Summaries of a dataset: slide and class counts, split sizes, bag sizes, feature width, ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from wsigym.data.dataset import SPLITS, SlideDataset


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": float(a.min()),
        "median": float(np.median(a)),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def describe(dataset: SlideDataset, fold: int = 0, progress: bool = False) -> dict[str, Any]:
    """Read every slide once and summarise the dataset.

    Returns a JSON-serialisable dict with ``name``, ``class_names``, ``slides``, ``class_counts``
    ({class name: slides}), ``fold``, ``num_folds``, ``split_sizes`` ({split: slides}), ``patches``
    (min/median/mean/max of N), ``feature_dim`` (d; a list when slides differ), ``k`` (children per patch,
    None without high-res features; a list when slides differ), ``hr_valid_fraction`` (mean fraction of
    valid children), ``views`` (names present in every slide) and ``tumour`` (None without ground truth):
    over positive slides (label > 0) the per-slide ``area_fraction`` = mean_i tumour_fraction_i and
    ``patch_fraction`` = share of patches with tumour_fraction > 0, each as min/median/mean/max.
    """
    ids = dataset.slide_ids()
    class_counts = {c: 0 for c in dataset.class_names}
    ns: list[float] = []
    dims: set[int] = set()
    ks: set[int | None] = set()
    hr_valid: list[float] = []
    views: set[str] | None = None
    area: list[float] = []
    patch: list[float] = []
    truth_everywhere = True
    for sid in tqdm(ids, desc=f"describe {dataset.name}", unit="slide", disable=not progress):
        bag = dataset.load(sid, hr=True)
        class_counts[dataset.class_names[bag.label]] += 1
        ns.append(bag.n)
        dims.add(bag.dim)
        ks.add(bag.k)
        if bag.hr_features is not None:
            mask = bag.hr_mask if bag.hr_mask is not None else np.ones(bag.hr_features.shape[:2], bool)
            hr_valid.append(float(mask.mean()))
        views = set(bag.views) if views is None else views & set(bag.views)
        if bag.tumour_fraction is None:
            truth_everywhere = False
        elif bag.label > 0:
            area.append(float(np.mean(bag.tumour_fraction)))
            patch.append(float(np.mean(bag.tumour_fraction > 0)))
    splits = {s: len(dataset.split(s, fold)) for s in SPLITS} if dataset.num_folds else {}
    tumour = None
    if ids and truth_everywhere:
        tumour = {
            "positive_slides": len(area),
            "area_fraction": _stats(area),
            "patch_fraction": _stats(patch),
        }

    def one_or_list(values: set[Any]) -> Any:
        return next(iter(values)) if len(values) == 1 else sorted(values, key=lambda v: (v is None, v or 0))

    return {
        "name": dataset.name,
        "class_names": list(dataset.class_names),
        "slides": len(ids),
        "class_counts": class_counts,
        "fold": fold,
        "num_folds": dataset.num_folds,
        "split_sizes": splits,
        "patches": _stats(ns),
        "feature_dim": one_or_list(dims) if dims else None,
        "k": one_or_list(ks) if ks else None,
        "hr_valid_fraction": float(np.mean(hr_valid)) if hr_valid else None,
        "views": sorted(views or []),
        "tumour": tumour,
    }


def _fmt_stats(s: dict[str, float] | None, digits: int = 1) -> str:
    if s is None:
        return "-"
    return (
        " / ".join(f"{s[key]:.{digits}f}" for key in ("min", "median", "mean", "max"))
        + "  (min/median/mean/max)"
    )


def format_description(d: dict[str, Any]) -> str:
    """Render :func:`describe`'s dict as aligned text lines."""
    counts = ", ".join(f"{c}: {n}" for c, n in d["class_counts"].items())
    splits = ", ".join(f"{s}: {n}" for s, n in d["split_sizes"].items())
    rows = [
        ("dataset", d["name"]),
        ("slides", f"{d['slides']}  ({counts})"),
        (f"fold {d['fold']} of {d['num_folds']}", splits),
        ("patches per slide N", _fmt_stats(d["patches"])),
        ("feature width d", str(d["feature_dim"])),
        ("children per patch k", "-" if d["k"] is None else str(d["k"])),
    ]
    if d["hr_valid_fraction"] is not None:
        rows.append(("valid children", f"{100 * d['hr_valid_fraction']:.1f}%"))
    if d["views"]:
        rows.append(("views", ", ".join(d["views"])))
    t = d["tumour"]
    if t is not None:
        rows.append(("positive slides with truth", str(t["positive_slides"])))
        rows.append(("tumour area fraction", _fmt_stats(t["area_fraction"], 3)))
        rows.append(("tumour patch fraction", _fmt_stats(t["patch_fraction"], 3)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
