"""TRIDENT job folders: low-res bags from one magnification, high-res children from another.

Layout (``job_dir`` is TRIDENT's ``--job_dir``)::

    <job_dir>/{mag}x_{ps}px_{ov}px_overlap/features_<encoder>/<slide>.h5
        features  (N, D) float
        coords    (N, 2) int64 level-0 top-left, attributes patch_size, patch_size_level0,
                  level0_magnification, target_magnification, overlap, name, ...
        tissue_mask (N,) bool, optional (written by :mod:`wsigym.slides.extract`): rows with False
                  are background children and are left out before pairing
        attrs['mpp'] optional microns per level-0 pixel (root attribute)

``Z`` comes from the ``lr_mag`` folder; ``U`` from the ``hr_mag`` folder, paired by coordinates with
:func:`~wsigym.data.pairing.pair_children` (``k = (patch_size_level0_lr / patch_size_level0_hr)^2``).
Children missing from the high-res file are masked out; a child inside no parent is an error naming the
file. The labels CSV has ``slide_id,label`` or TRIDENT's ``wsi,label`` (file name; extension dropped).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.folder import FolderDataset
from wsigym.data.h5 import open_h5, read_h5_array
from wsigym.data.labels_csv import read_labels_csv
from wsigym.data.pairing import children_per_side, pair_children
from wsigym.data.splits import resolve_splits
from wsigym.errors import DataError

JOB_FOLDER = re.compile(r"(\d+(?:\.\d+)?)x_(\d+)px_(\d+)px_overlap")


@dataclass(frozen=True)
class TridentLevel:
    """One ``{mag}x_{ps}px_{ov}px_overlap/features_<encoder>`` folder."""

    magnification: float
    patch_size: int
    overlap: int
    folder: Path  # the features_<encoder> folder
    encoder: str


def job_folders(job_dir: str | Path) -> list[tuple[float, int, int, Path]]:
    """``(mag, patch_size, overlap, path)`` of every ``{mag}x_{ps}px_{ov}px_overlap`` folder, sorted."""
    job_dir = Path(job_dir)
    out = []
    if job_dir.is_dir():
        for p in job_dir.iterdir():
            m = JOB_FOLDER.fullmatch(p.name)
            if m and p.is_dir():
                out.append((float(m.group(1)), int(m.group(2)), int(m.group(3)), p))
    return sorted(out)


def find_level(job_dir: str | Path, mag: float, encoder: str | None) -> TridentLevel:
    """The single feature folder of magnification ``mag`` (and ``encoder`` when given).

    Raises:
        DataError: no folder or several candidates, listing what was found.
    """
    job_dir = Path(job_dir)
    cands = []
    for m, ps, ov, p in job_folders(job_dir):
        if abs(m - float(mag)) > 1e-6:
            continue
        for feat in sorted(p.glob("features_*")):
            enc = feat.name.removeprefix("features_")
            if feat.is_dir() and (encoder is None or enc == encoder):
                cands.append(TridentLevel(m, ps, ov, feat, enc))
    if len(cands) != 1:
        found = [str(p.relative_to(job_dir)) for p in sorted(job_dir.glob("*x_*px_*px_overlap/features_*"))]
        want = f"{mag:g}x_*px_*px_overlap/features_{encoder or '*'}"
        what = "no folder" if not cands else f"{len(cands)} folders"
        raise DataError(job_dir, f"{what} match {want} (found {found}); pass encoder= to choose")
    return cands[0]


@dataclass(frozen=True)
class TridentFile:
    """Arrays and geometry of one TRIDENT features file."""

    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64 level-0
    patch_size_level0: int
    level0_magnification: float | None
    target_magnification: float | None
    tissue_mask: np.ndarray | None  # (N,) bool, optional ``tissue_mask`` dataset (False = background)
    mpp: float | None  # optional finite root attribute ``mpp``


def read_trident_features(path: str | Path, dim: int | None = None) -> TridentFile:
    """Read ``features`` and ``coords`` (with its geometry attributes) from one TRIDENT file."""
    path = Path(path)
    with open_h5(path) as f:
        z = read_h5_array(f, "features", path, kind="float", shape=(None, dim), finite_rows=True)
        coords = read_h5_array(f, "coords", path, kind="int", shape=(z.shape[0], 2))
        attrs = dict(f["coords"].attrs)
        tissue = None
        if "tissue_mask" in f:
            tissue = read_h5_array(f, "tissue_mask", path, kind="bool", shape=(z.shape[0],))
        mpp = f.attrs.get("mpp")
        mpp = float(mpp) if mpp is not None and np.isfinite(float(mpp)) and float(mpp) > 0 else None
    if z.shape[0] == 0:
        raise DataError(path, "dataset 'features' has no rows")
    if "patch_size_level0" not in attrs:
        raise DataError(path, f"attribute 'patch_size_level0' of 'coords' is missing (found {sorted(attrs)})")
    try:
        ps0 = int(attrs["patch_size_level0"])
    except (TypeError, ValueError) as e:
        raise DataError(
            path, f"attribute coords.patch_size_level0 must be an integer, got {attrs['patch_size_level0']!r}"
        ) from e
    if ps0 <= 0:
        raise DataError(path, f"attribute coords.patch_size_level0 must be positive, got {ps0}")

    def opt(key: str) -> float | None:
        return float(attrs[key]) if key in attrs else None

    return TridentFile(z, coords, ps0, opt("level0_magnification"), opt("target_magnification"), tissue, mpp)


class TridentDataset(FolderDataset):
    """Slides from a TRIDENT job folder.

    Args:
        job_dir: TRIDENT job folder (holding ``{mag}x_{ps}px_{ov}px_overlap/``).
        labels_csv: ``slide_id,label`` or ``wsi,label`` CSV (class names as labels).
        encoder: ``features_<encoder>`` to read; ``None`` when each magnification has exactly one.
        lr_mag: magnification of the low-res bags.
        hr_mag: magnification of the children; ``None`` for low-res-only bags.
        splits_dir: folder of CLAM ``splits_<k>.csv`` or ``split_<n>.json``; ``None`` makes splits.
        class_names: class order; default the sorted distinct labels.
        childless: ``"drop"`` or ``"error"`` for low-res patches without any high-res child.
    """

    def __init__(
        self,
        job_dir: str | Path,
        labels_csv: str | Path,
        encoder: str | None = None,
        lr_mag: float = 5,
        hr_mag: float | None = 20,
        splits_dir: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
        n_folds: int = 5,
        seed: int = 0,
        childless: str = "drop",
    ) -> None:
        job_dir = Path(job_dir)
        if not job_folders(job_dir):
            raise DataError(job_dir, "not a TRIDENT job folder (expected {mag}x_{ps}px_{ov}px_overlap/)")
        self.lr = find_level(job_dir, lr_mag, encoder)
        self.hr = None if hr_mag is None else find_level(job_dir, hr_mag, encoder or self.lr.encoder)
        labels, classes = read_labels_csv(labels_csv, class_names)
        for level in (self.lr, self.hr):
            if level is None:
                continue
            for sid in labels:
                if not (level.folder / f"{sid}.h5").is_file():
                    raise DataError(
                        level.folder / f"{sid}.h5",
                        f"slide {sid!r} is in {Path(labels_csv).name} but has no feature file",
                    )
        self.childless = childless
        splits = resolve_splits(splits_dir, labels, n_folds=n_folds, seed=seed)
        super().__init__(job_dir, name or job_dir.name, classes, labels, splits, splits_dir or job_dir)

    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        """Read the low-res file and, when ``hr``, pair the high-res file's patches as children."""
        label = self.label(slide_id)
        lr_path = self.lr.folder / f"{slide_id}.h5"
        lo = read_trident_features(lr_path)
        z, coords = lo.features, lo.coords
        extra: dict[str, object] = {"source": "trident", "lr_file": str(lr_path.relative_to(self.root))}
        hr_kwargs: dict[str, np.ndarray] = {}
        hr_ps0 = lo.patch_size_level0
        if self.hr is not None:
            hr_path = self.hr.folder / f"{slide_id}.h5"
            if hr:
                hi = read_trident_features(hr_path, dim=z.shape[1])
                hr_ps0 = hi.patch_size_level0
                children_per_side(lo.patch_size_level0, hr_ps0, hr_path)
                cf, cc = hi.features, hi.coords
                if hi.tissue_mask is not None:  # wsigym's extractor lists every child and flags tissue
                    cf, cc = cf[hi.tissue_mask], cc[hi.tissue_mask]
                paired = pair_children(
                    coords, cf, cc, lo.patch_size_level0, hr_ps0, hr_path, childless=self.childless
                )
                z, coords = z[paired.keep], coords[paired.keep]
                extra["childless_dropped"] = paired.n_dropped
                extra["hr_file"] = str(hr_path.relative_to(self.root))
                hr_kwargs = {
                    "hr_features": paired.hr_features,
                    "hr_mask": paired.hr_mask,
                    "hr_coords": paired.hr_coords,
                }
            else:
                hr_ps0 = max(1, round(lo.patch_size_level0 * self.lr.magnification / self.hr.magnification))
        if lo.level0_magnification is not None:
            extra["level0_magnification"] = lo.level0_magnification
        meta = SlideMeta(
            lr_magnification=lo.target_magnification or self.lr.magnification,
            hr_magnification=self.hr.magnification if self.hr is not None else self.lr.magnification,
            patch_size_level0=lo.patch_size_level0,
            hr_patch_size_level0=hr_ps0,
            mpp=lo.mpp,
            encoder=self.lr.encoder,
            extra=extra,
        )
        bag = SlideBag(slide_id, z, coords, label, self.class_names, meta=meta, **hr_kwargs)
        return bag.validate(str(lr_path))
