"""SASHA grouped feature files: one HDF5 per resolution, one group per slide.

Layout::

    <root>/lr/h5_files/patch_feats_pretrain_<pretrain>.h5   group <slide_id>: feat (N, d) float16, coords (N, 2)
    <root>/hr/h5_files/patch_feats_pretrain_<pretrain>.h5   group <slide_id>: feat (N, k, d), coords (N, k, 2)
    group attribute 'label': class index (int) or class name
    splits: split_<seed>.json with keys train_names, val_names, test_names

SASHA extracts all ``k = 16`` children of every low-res patch, so every child is valid (``hr_mask`` all
True). Patch sizes are not stored; they are inferred from the coordinates: the child side ``c`` is the
greatest common divisor of the child offsets inside their parents, and ``P = sqrt(k) * c``. Pass
``patch_size_level0`` / ``hr_patch_size_level0`` to override (needed when ``k = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.folder import FolderDataset
from wsigym.data.h5 import open_h5, read_h5_array
from wsigym.data.splits import resolve_splits
from wsigym.errors import DataError

SASHA_SPLIT_KEYS = {"train": "train_names", "val": "val_names", "test": "test_names"}


def sasha_file(root: str | Path, resolution: str, pretrain: str) -> Path:
    """``<root>/<resolution>/h5_files/patch_feats_pretrain_<pretrain>.h5``."""
    return Path(root) / resolution / "h5_files" / f"patch_feats_pretrain_{pretrain}.h5"


def _label_index(raw: object, class_names: Sequence[str], source: str) -> int:
    if isinstance(raw, bytes):
        raw = raw.decode()
    if isinstance(raw, (np.ndarray, np.generic)) and np.size(raw) == 1:
        raw = raw.item()
    if isinstance(raw, str):
        if raw in class_names:
            return list(class_names).index(raw)
        if raw.strip().lstrip("-").isdigit():
            raw = int(raw)
    if isinstance(raw, (int, np.integer)) or (
        isinstance(raw, (float, np.floating)) and float(raw).is_integer()
    ):
        i = int(raw)
        if 0 <= i < len(class_names):
            return i
    raise DataError(
        source, f"attribute 'label' = {raw!r} is not a class index or name of {list(class_names)}"
    )


class SashaDataset(FolderDataset):
    """Slides from SASHA's grouped ``lr/`` and ``hr/`` feature files.

    Args:
        root: folder holding ``lr/h5_files/`` and ``hr/h5_files/``.
        pretrain: the ``<name>`` in ``patch_feats_pretrain_<name>.h5``.
        splits_dir: folder of ``split_<seed>.json`` (SASHA keys); ``None`` uses ``<root>/splits`` when it
            exists, else makes stratified splits.
        class_names: class order of the integer labels.
    """

    def __init__(
        self,
        root: str | Path,
        pretrain: str = "medical_ssl",
        splits_dir: str | Path | None = None,
        class_names: Sequence[str] = ("normal", "tumour"),
        patch_size_level0: int | None = None,
        hr_patch_size_level0: int | None = None,
        lr_magnification: float = 5.0,
        hr_magnification: float = 20.0,
        name: str | None = None,
        n_folds: int = 5,
        seed: int = 0,
    ) -> None:
        root = Path(root)
        self.lr_file = sasha_file(root, "lr", pretrain)
        self.hr_file = sasha_file(root, "hr", pretrain)
        labels: dict[str, int] = {}
        with open_h5(self.lr_file) as f:
            for sid in sorted(f):
                labels[sid] = self._group_label(f, sid, self.lr_file, class_names)
        if not labels:
            raise DataError(self.lr_file, "no slide groups")
        with open_h5(self.hr_file) as f:
            missing = sorted(set(labels) - set(f))
        if missing:
            raise DataError(
                self.hr_file,
                f"{len(missing)} slides of the lr file have no group here (first: {missing[0]!r})",
            )
        self.pretrain = pretrain
        self.patch_size_level0 = patch_size_level0
        self.hr_patch_size_level0 = hr_patch_size_level0
        self.lr_magnification = float(lr_magnification)
        self.hr_magnification = float(hr_magnification)
        if splits_dir is None and (root / "splits").is_dir():
            splits_dir = root / "splits"
        splits = resolve_splits(splits_dir, labels, json_keys=SASHA_SPLIT_KEYS, n_folds=n_folds, seed=seed)
        super().__init__(root, name or root.name, class_names, labels, splits, splits_dir or root)

    @staticmethod
    def _group_label(f: object, sid: str, path: Path, class_names: Sequence[str]) -> int:
        import h5py

        group = f[sid]  # type: ignore[index]
        source = f"{path} group {sid!r}"
        if not isinstance(group, h5py.Group):
            raise DataError(source, "expected a group per slide holding 'feat' and 'coords'")
        if "label" not in group.attrs:
            raise DataError(source, "attribute 'label' is missing")
        return _label_index(group.attrs["label"], class_names, source)

    def _geometry(self, coords: np.ndarray, hr_coords: np.ndarray, source: str) -> tuple[int, int]:
        k = hr_coords.shape[1]
        side = math.isqrt(k)
        if side * side != k:
            raise DataError(source, f"k = {k} children per patch is not a square number")
        if self.patch_size_level0 is not None and self.hr_patch_size_level0 is not None:
            return int(self.patch_size_level0), int(self.hr_patch_size_level0)
        rel = np.abs(hr_coords - coords[:, None, :])
        c = int(np.gcd.reduce(rel.ravel())) if rel.any() else 0
        if self.hr_patch_size_level0 is not None:
            c = int(self.hr_patch_size_level0)
        if c <= 0:
            raise DataError(
                source, "cannot infer the patch sizes from the coordinates; pass hr_patch_size_level0"
            )
        return side * c if self.patch_size_level0 is None else int(self.patch_size_level0), c

    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        """Read one slide's groups; all ``k`` children are valid."""
        label = self.label(slide_id)
        lr_src = f"{self.lr_file} group {slide_id!r}"
        with open_h5(self.lr_file) as f:
            g = f[slide_id]
            z = read_h5_array(g, "feat", lr_src, kind="float", shape=(None, None), finite_rows=True)
            coords = read_h5_array(g, "coords", lr_src, kind="int", shape=(z.shape[0], 2))
        if z.shape[0] == 0:
            raise DataError(lr_src, "dataset 'feat' has no rows")
        hr_src = f"{self.hr_file} group {slide_id!r}"
        with open_h5(self.hr_file) as f:
            g = f[slide_id]
            hr_label = self._group_label(f, slide_id, self.hr_file, self.class_names)
            if hr_label != label:
                raise DataError(hr_src, f"label {hr_label} differs from the lr file's label {label}")
            hr_coords = read_h5_array(g, "coords", hr_src, kind="int", shape=(z.shape[0], None, 2))
            u = None
            if hr:
                u = read_h5_array(
                    g, "feat", hr_src, kind="float", shape=(z.shape[0], hr_coords.shape[1], z.shape[1])
                )
        ps, cs = self._geometry(coords, hr_coords, hr_src)
        meta = SlideMeta(
            lr_magnification=self.lr_magnification,
            hr_magnification=self.hr_magnification,
            patch_size_level0=ps,
            hr_patch_size_level0=cs,
            encoder=self.pretrain,
            extra={"source": "sasha"},
        )
        bag = SlideBag(slide_id, z, coords, label, self.class_names, meta=meta)
        if u is not None:
            bag.hr_features = u
            bag.hr_mask = np.ones(u.shape[:2], dtype=bool)
            bag.hr_coords = hr_coords
        return bag.validate(hr_src if hr else lr_src)
