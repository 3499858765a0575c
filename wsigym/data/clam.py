"""CLAM feature folders (``extract_features_fp.py`` output).

Layout::

    <root>/h5_files/<slide_id>.h5   features (N, D) float, coords (N, 2) level-0 top-left; no attributes
    <root>/pt_files/<slide_id>.pt   features (N, D) only (optional; read when the .h5 is absent)
    labels CSV                      case_id,slide_id,label   (label = class name)
    splits folder (optional)        splits_<k>.csv with columns ,train,val,test (ragged)

CLAM files carry no patch size, so it is an argument (``patch_size_level0``; CLAM's default is 256 px at
level 0). A slide that only has a ``.pt`` file has no coordinates: its patches are laid out row-major on a
square grid and ``meta.extra["coords"] == "synthetic"`` says so; such a slide cannot be paired.

With ``hr_root`` (a second CLAM feature folder extracted at higher magnification from the same slides),
high-res children are paired to low-res patches by coordinates (:mod:`wsigym.data.pairing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.folder import FolderDataset
from wsigym.data.h5 import open_h5, read_h5_array
from wsigym.data.labels_csv import read_labels_csv
from wsigym.data.pairing import children_per_side, pair_children
from wsigym.data.splits import resolve_splits
from wsigym.errors import DataError


def read_clam_features(root: str | Path, slide_id: str) -> tuple[np.ndarray, np.ndarray | None, Path]:
    """Read one slide from a CLAM folder: ``(features (N, D) float32, coords (N, 2) int64 or None, file)``.

    ``coords`` is ``None`` when only ``pt_files/<slide_id>.pt`` exists.
    """
    root = Path(root)
    h5 = root / "h5_files" / f"{slide_id}.h5"
    pt = root / "pt_files" / f"{slide_id}.pt"
    if h5.is_file():
        with open_h5(h5) as f:
            z = read_h5_array(f, "features", h5, kind="float", shape=(None, None), finite_rows=True)
            coords = read_h5_array(f, "coords", h5, kind="int", shape=(z.shape[0], 2))
        if z.shape[0] == 0:
            raise DataError(h5, "dataset 'features' has no rows")
        return z, coords, h5
    if pt.is_file():
        import torch

        try:
            t = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(pt, f"not a loadable tensor file ({type(e).__name__}: {e})") from e
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] == 0:
            raise DataError(
                pt, f"expected one (N, D) tensor, got {type(t).__name__} {getattr(t, 'shape', '')}"
            )
        if not t.is_floating_point():
            raise DataError(pt, f"expected floating-point features, got {t.dtype}")
        z = t.float().numpy()
        bad = ~np.isfinite(z).all(axis=1)
        if bad.any():
            raise DataError(
                pt, f"features have NaN/inf in {int(bad.sum())} rows (first: row {int(np.argmax(bad))})"
            )
        return z, None, pt
    raise DataError(h5, f"feature file for slide {slide_id!r} not found (nor {pt.name} in pt_files/)")


class CLAMDataset(FolderDataset):
    """Slides from a CLAM feature folder, low-res only or paired with a high-magnification folder.

    Args:
        root: folder with ``h5_files/`` (and/or ``pt_files/``).
        labels_csv: ``case_id,slide_id,label`` CSV (class names as labels).
        splits_dir: folder of CLAM ``splits_<k>.csv`` (or ``split_<n>.json``); ``None`` makes
            ``n_folds`` stratified splits with ``seed`` (:func:`~wsigym.data.splits.make_splits`).
        class_names: class order; default the sorted distinct labels.
        patch_size_level0: low-res patch side in level-0 pixels.
        hr_root: CLAM folder of high-res features of the same slides (optional).
        hr_patch_size_level0: high-res patch side in level-0 pixels (needed with ``hr_root``).
        lr_magnification, hr_magnification: recorded in the bag's meta.
        encoder: encoder name recorded in the meta.
        childless: ``"drop"`` or ``"error"`` for low-res patches without high-res children.
    """

    def __init__(
        self,
        root: str | Path,
        labels_csv: str | Path,
        splits_dir: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        patch_size_level0: int = 256,
        hr_root: str | Path | None = None,
        hr_patch_size_level0: int | None = None,
        lr_magnification: float = 5.0,
        hr_magnification: float = 20.0,
        encoder: str = "unknown",
        name: str | None = None,
        n_folds: int = 5,
        seed: int = 0,
        childless: str = "drop",
    ) -> None:
        root = Path(root)
        if not (root / "h5_files").is_dir() and not (root / "pt_files").is_dir():
            raise DataError(root, "not a CLAM feature folder (expected h5_files/ or pt_files/)")
        labels, classes = read_labels_csv(labels_csv, class_names)
        for sid in labels:
            if (
                not (root / "h5_files" / f"{sid}.h5").is_file()
                and not (root / "pt_files" / f"{sid}.pt").is_file()
            ):
                raise DataError(
                    root / "h5_files" / f"{sid}.h5",
                    f"slide {sid!r} is in {Path(labels_csv).name} but has no feature file",
                )
        self.hr_root = None if hr_root is None else Path(hr_root)
        if self.hr_root is not None:
            if hr_patch_size_level0 is None:
                raise DataError(
                    self.hr_root,
                    "hr_patch_size_level0 is required with hr_root (CLAM files have no patch size)",
                )
            children_per_side(patch_size_level0, hr_patch_size_level0, self.hr_root)
            if not (self.hr_root / "h5_files").is_dir():
                raise DataError(
                    self.hr_root, "high-res CLAM folder needs h5_files/ (coordinates are required to pair)"
                )
        self.patch_size_level0 = int(patch_size_level0)
        self.hr_patch_size_level0 = int(hr_patch_size_level0 or patch_size_level0)
        self.lr_magnification = float(lr_magnification)
        self.hr_magnification = float(hr_magnification)
        self.encoder = encoder
        self.childless = childless
        splits = resolve_splits(splits_dir, labels, n_folds=n_folds, seed=seed)
        super().__init__(root, name or root.name, classes, labels, splits, splits_dir or root)

    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        """Read one slide (pairing its high-res children when ``hr_root`` was given and ``hr``)."""
        label = self.label(slide_id)
        z, coords, source = read_clam_features(self.root, slide_id)
        extra: dict[str, object] = {"source": "clam"}
        if coords is None:
            side = math.ceil(math.sqrt(z.shape[0]))
            rows, cols = np.divmod(np.arange(z.shape[0]), side)
            coords = np.stack([cols, rows], axis=1).astype(np.int64) * self.patch_size_level0
            extra["coords"] = "synthetic"
        hr_kwargs: dict[str, np.ndarray] = {}
        if self.hr_root is not None and hr:
            if extra.get("coords") == "synthetic":
                raise DataError(
                    source, "cannot pair high-res children: this slide has no coordinates (.pt only)"
                )
            hr_path = self.hr_root / "h5_files" / f"{slide_id}.h5"
            with open_h5(hr_path) as f:
                cz = read_h5_array(
                    f, "features", hr_path, kind="float", shape=(None, z.shape[1]), finite_rows=True
                )
                cc = read_h5_array(f, "coords", hr_path, kind="int", shape=(cz.shape[0], 2))
            paired = pair_children(
                coords,
                cz,
                cc,
                self.patch_size_level0,
                self.hr_patch_size_level0,
                hr_path,
                childless=self.childless,
            )
            z, coords = z[paired.keep], coords[paired.keep]
            extra["childless_dropped"] = paired.n_dropped
            hr_kwargs = {
                "hr_features": paired.hr_features,
                "hr_mask": paired.hr_mask,
                "hr_coords": paired.hr_coords,
            }
        meta = SlideMeta(
            lr_magnification=self.lr_magnification,
            hr_magnification=self.hr_magnification if self.hr_root is not None else self.lr_magnification,
            patch_size_level0=self.patch_size_level0,
            hr_patch_size_level0=self.hr_patch_size_level0,
            encoder=self.encoder,
            extra=extra,
        )
        bag = SlideBag(slide_id, z, coords, label, self.class_names, meta=meta, **hr_kwargs)
        return bag.validate(str(source))
