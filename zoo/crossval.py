r"""Stratified K-fold cross-validation of any dataset, without writing a dataset folder per fold.

:func:`stratified_folds` deals the slides of each class, shuffled by a seeded generator, round-robin
into ``K`` folds, so every fold holds ``floor`` or ``ceil`` of ``n_c / K`` slides of class ``c``.
For repeat ``r`` and fold ``k`` (:func:`cv_splits`): the test split is fold ``k``; the rest is the
training part, of which a stratified ``val_fraction`` (default 0: no validation, so training
selects the last epoch) becomes the validation split. The generator is
``numpy.random.default_rng([seed, r])``: the same ``seed`` gives the same folds.

:class:`FoldDataset` is a view of the base dataset with one fold (fold 0 = that split), and, when
asked, :class:`FeatureStandardiser` statistics fitted on the training split only:

.. math:: x \mapsto (x - \mu) / \sigma, \qquad \mu, \sigma \text{ per feature over every training
   instance (low-res rows; valid high-res children separately)}

(off by default: foundation-model features are usually used as they are).

:func:`cross_validate` trains one run folder per (repeat, fold), ``<out>/r<r>-f<k>/`` (weights,
card, ``metrics.json`` with a ``cv`` entry, ``test_predictions.csv``, ``standardisation.json`` when
standardised), and writes ``<out>/cv.json`` with the settings, the folds and the mean ± std of the
test metrics (:func:`zoo.results.cv_summary`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsigym.data.bag import SlideBag
from wsigym.data.dataset import SlideDataset

CV_NAME = "cv.json"
STANDARDISATION_NAME = "standardisation.json"


def stratified_folds(labels: Sequence[int], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of ``k`` stratified folds of ``labels`` (``(S,)`` class indices), each sorted.

    Raises:
        ValueError: when ``k < 2`` or a class has fewer than ``k`` members.
    """
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"--cv: the number of folds must be >= 2, got {k}")
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise ValueError(f"--cv {k}: class {int(c)} has only {len(members)} slides, fewer than the folds")
        members = rng.permutation(members)
        for i, index in enumerate(members):
            folds[(offset + i) % k].append(int(index))
        offset += len(members)  # the next class starts where this one stopped: balanced fold sizes
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in folds]


def _stratified_take(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask taking ``round(fraction * n_c)`` members of each class (at least one if > 0)."""
    take = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = round(fraction * len(members))
        if fraction > 0:
            n = min(max(n, 1), len(members) - 1)
        take[rng.permutation(members)[:n]] = True
    return take


def cv_splits(
    dataset: SlideDataset, k: int, repeats: int = 1, seed: int = 0, val_fraction: float = 0.0
) -> list[tuple[int, int, dict[str, list[str]]]]:
    """``(repeat, fold, {"train", "val", "test"})`` for every repeat and fold (see the module docstring)."""
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    ids = list(dataset.slide_ids())
    labels = np.array([dataset.label(s) for s in ids])
    out = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        folds = stratified_folds(labels, k, rng)
        for f, test in enumerate(folds):
            rest = np.setdiff1d(np.arange(len(ids)), test)
            val_mask = _stratified_take(labels[rest], val_fraction, rng)
            split = {
                "train": [ids[i] for i in rest[~val_mask]],
                "val": [ids[i] for i in rest[val_mask]],
                "test": [ids[i] for i in test],
            }
            out.append((r, f, split))
    return out


class _Moments:
    """Running float64 sums of rows ``(M, d)``: mean and std per feature."""

    def __init__(self) -> None:
        self.total: Any = 0.0
        self.squares: Any = 0.0
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        self.total = self.total + x.sum(0)
        self.squares = self.squares + np.square(x).sum(0)
        self.n += len(x)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / max(self.n, 1)
        std = np.sqrt(np.maximum(self.squares / max(self.n, 1) - mean**2, 0.0))
        return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


@dataclass
class FeatureStandardiser:
    """Per-feature mean and standard deviation: ``lr_mean, lr_std (d,)`` and optional ``hr_*`` ``(d_hr,)``."""

    lr_mean: np.ndarray
    lr_std: np.ndarray
    hr_mean: np.ndarray | None = None
    hr_std: np.ndarray | None = None

    @classmethod
    def fit(cls, dataset: SlideDataset, ids: Sequence[str], hr: bool = False) -> FeatureStandardiser:
        """Statistics over every low-res row (and valid high-res child when ``hr``) of slides ``ids``.

        Streams the bags with float64 sums; a feature with zero variance gets ``std = 1``.
        """
        if not ids:
            raise ValueError("standardisation: no training slides to fit on")
        lr, hr_sums = _Moments(), _Moments()
        for slide_id in ids:
            bag = dataset.load(slide_id, hr=hr)
            lr.add(bag.features)
            if hr and bag.hr_features is not None:
                mask = bag.hr_mask if bag.hr_mask is not None else np.ones(bag.hr_features.shape[:2], bool)
                hr_sums.add(bag.hr_features[mask])
        lr_mean, lr_std = lr.stats()
        hr_mean, hr_std = hr_sums.stats() if hr_sums.n else (None, None)
        return cls(lr_mean, lr_std, hr_mean, hr_std)

    def apply(self, bag: SlideBag) -> SlideBag:
        """A copy of ``bag`` with standardised ``features`` (and ``hr_features`` when fitted)."""
        import dataclasses

        changes: dict[str, Any] = {
            "features": ((bag.features - self.lr_mean) / self.lr_std).astype(np.float32)
        }
        if bag.hr_features is not None and self.hr_mean is not None and self.hr_std is not None:
            changes["hr_features"] = ((bag.hr_features - self.hr_mean) / self.hr_std).astype(np.float32)
        return dataclasses.replace(bag, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lr": {"mean": self.lr_mean.tolist(), "std": self.lr_std.tolist()}}
        if self.hr_mean is not None and self.hr_std is not None:
            out["hr"] = {"mean": self.hr_mean.tolist(), "std": self.hr_std.tolist()}
        return out


class FoldDataset(SlideDataset):
    """One split of a base dataset as fold 0, optionally standardised (see the module docstring).

    High-res statistics are fitted on the training split the first time a high-res bag is loaded
    (so low-res models never read the children).
    """

    def __init__(
        self, base: SlideDataset, split: dict[str, list[str]], standardiser: FeatureStandardiser | None = None
    ) -> None:
        self.base, self.standardiser = base, standardiser
        self.name = base.name
        self.class_names = tuple(base.class_names)
        self.splits = [{s: list(split.get(s, [])) for s in ("train", "val", "test")}]

    def slide_ids(self) -> list[str]:
        return [s for part in ("train", "val", "test") for s in self.splits[0][part]]

    def label(self, slide_id: str) -> int:
        return self.base.label(slide_id)

    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        bag = self.base.load(slide_id, hr=hr)
        if self.standardiser is None:
            return bag
        if bag.hr_features is not None and self.standardiser.hr_mean is None:
            fitted = FeatureStandardiser.fit(self.base, self.splits[0]["train"], hr=True)
            self.standardiser.hr_mean, self.standardiser.hr_std = fitted.hr_mean, fitted.hr_std
        return self.standardiser.apply(bag)


#: ``train_fold(fold_dataset, out_dir, seed) -> out_dir``: trains and saves one run (fold 0 of the view)
TrainFold = Callable[[SlideDataset, Path, int], Path]


def cross_validate(
    dataset: SlideDataset,
    train_fold: TrainFold,
    out_dir: str | Path,
    *,
    k: int,
    repeats: int = 1,
    seed: int = 0,
    val_fraction: float = 0.0,
    standardise: bool = False,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Train every (repeat, fold) of :func:`cv_splits` with ``train_fold`` and write ``<out>/cv.json``.

    The run of repeat ``r``, fold ``f`` is trained with seed ``seed + r * k + f`` (model init and
    shuffling) into ``<out>/r<r>-f<f>``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from wsigym.io import atomic_write_json
    from zoo.results import cv_summary

    out = Path(out_dir)
    runs = []
    for r, f, split in cv_splits(dataset, k, repeats, seed, val_fraction):
        standardiser = FeatureStandardiser.fit(dataset, split["train"]) if standardise else None
        run_dir = out / f"r{r}-f{f}"
        run_seed = seed + r * k + f
        train_fold(FoldDataset(dataset, split, standardiser), run_dir, run_seed)
        if standardiser is not None:
            atomic_write_json(run_dir / STANDARDISATION_NAME, standardiser.to_dict(), sort_keys=True)
        metrics_path = run_dir / "metrics.json"
        record = json.loads(metrics_path.read_text())
        record["cv"] = {"repeat": r, "fold": f, "folds": k, "repeats": repeats, "split": split}
        atomic_write_json(metrics_path, record, sort_keys=True)
        runs.append(run_dir.name)
    summary = {
        "dataset": dataset.name,
        "folds": k,
        "repeats": repeats,
        "seed": seed,
        "val_fraction": val_fraction,
        "standardise": standardise,
        "settings": settings or {},
        "runs": runs,
        "test": cv_summary(out, runs),
    }
    atomic_write_json(out / CV_NAME, summary, sort_keys=True)
    return out
