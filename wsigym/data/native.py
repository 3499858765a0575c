"""The project's own dataset format (``"wsigym"``, version 1): one HDF5 file per slide.

Dataset folder::

    <root>/dataset.json          {"name", "class_names", "format": "wsigym", "format_version": 1}
    <root>/labels.csv            slide_id,label          (label = class NAME)
    <root>/splits/split_<f>.json {"train": [...], "val": [...], "test": [...]}   one file per fold f
    <root>/slides/<slide_id>.h5  one bag per slide

Slide file ``slides/<slide_id>.h5`` (N low-res patches, k children, d features, e view width):

- ``lr/features`` ``(N, d)``: float16 or float32 (read as float32), low-res features Z.
- ``lr/coords`` ``(N, 2)``: int64 level-0 top-left ``(x, y)``.
- ``hr/features`` ``(N, k, d)``: float16/float32, high-res children U (optional group ``hr/``);
  masked-out children keep their values (non-finite ones are stored as 0).
- ``hr/mask`` ``(N, k)``: bool, True = child on tissue.
- ``hr/coords`` ``(N, k, 2)``: int64 level-0 top-left of each child.
- ``truth/tumour_fraction`` ``(N,)``: float, optional ground truth per low-res patch.
- ``truth/hr_tumour_fraction`` ``(N, k)``: float, optional (needs ``hr/``).
- ``views/<name>`` ``(N, e)``: float16/float32, optional extra views (e.g. ``vlm``).

Root attributes: ``format = "wsigym-bag"``, ``format_version = 1``, ``slide_id``, ``label`` (int index
into ``class_names``), ``class_names`` (JSON list), ``meta`` (JSON of ``SlideMeta.to_dict()``).

Every file is written to a temp file in the same folder and moved into place with ``os.replace``, so a
killed writer never leaves a half-written ``<slide_id>.h5``; temp files are named ``.<slide_id>.h5.*.tmp``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.folder import FolderDataset
from wsigym.data.h5 import open_h5, read_h5_array
from wsigym.data.labels_csv import check_slide_id, read_labels_csv, write_labels_csv
from wsigym.data.splits import read_json_splits
from wsigym.errors import DataError
from wsigym.io import atomic_write, atomic_write_json

FORMAT = "wsigym"
BAG_FORMAT = "wsigym-bag"
FORMAT_VERSION = 1
FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}


def slide_path(root: str | Path, slide_id: str) -> Path:
    """``<root>/slides/<slide_id>.h5``."""
    return Path(root) / "slides" / f"{check_slide_id(slide_id, root)}.h5"


def write_bag(bag: SlideBag, path: str | Path, dtype: str = "float16") -> Path:
    """Validate ``bag`` and write it to ``path`` atomically (temp file in the same folder + ``os.replace``).

    Args:
        dtype: storage type of features and views, ``"float16"`` (half the disk) or ``"float32"``.

    Raises:
        DataError: invalid bag, unknown dtype, or features that overflow ``float16``.
    """
    import h5py

    path = Path(path)
    if dtype not in FEATURE_DTYPES:
        raise DataError(path, f"dtype must be one of {sorted(FEATURE_DTYPES)}, got {dtype!r}")
    bag.validate(f"bag {bag.slide_id!r}")
    ftype = FEATURE_DTYPES[dtype]

    def feats(name: str, a: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        with np.errstate(over="ignore"):
            out = np.asarray(a).astype(ftype)
        ok = np.isfinite(out) if mask is None else np.isfinite(out) | ~mask[..., None]
        if not ok.all():
            raise DataError(
                path, f"{name} overflow {dtype} (max |value| {np.nanmax(np.abs(a)):.3g}); use float32"
            )
        return np.where(np.isfinite(out), out, 0).astype(ftype)  # only masked-out children can be non-finite

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = BAG_FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["slide_id"] = bag.slide_id
            f.attrs["label"] = int(bag.label)
            f.attrs["class_names"] = json.dumps(list(bag.class_names))
            f.attrs["meta"] = json.dumps(bag.meta.to_dict())
            f.create_dataset("lr/features", data=feats("lr/features", bag.features))
            f.create_dataset("lr/coords", data=bag.coords.astype(np.int64))
            if bag.hr_features is not None:
                k = bag.hr_features.shape[1]
                mask = bag.hr_mask if bag.hr_mask is not None else np.ones((bag.n, k), dtype=bool)
                f.create_dataset("hr/features", data=feats("hr/features", bag.hr_features, mask))
                f.create_dataset("hr/mask", data=mask.astype(bool))
                if bag.hr_coords is not None:
                    f.create_dataset("hr/coords", data=bag.hr_coords.astype(np.int64))
            if bag.tumour_fraction is not None:
                f.create_dataset("truth/tumour_fraction", data=bag.tumour_fraction.astype(np.float32))
            if bag.hr_tumour_fraction is not None:
                f.create_dataset("truth/hr_tumour_fraction", data=bag.hr_tumour_fraction.astype(np.float32))
            for name, view in bag.views.items():
                f.create_dataset(f"views/{name}", data=feats(f"views/{name}", view))

    return atomic_write(path, write)


def _attr_json(f: object, key: str, source: Path) -> object:
    attrs = f.attrs  # type: ignore[attr-defined]
    if key not in attrs:
        raise DataError(source, f"root attribute {key!r} is missing")
    try:
        return json.loads(attrs[key])
    except (TypeError, json.JSONDecodeError) as e:
        raise DataError(source, f"root attribute {key!r} is not valid JSON ({e})") from e


def read_bag(path: str | Path, hr: bool = True) -> SlideBag:
    """Read and validate one native slide file (see the module docstring for keys).

    Args:
        hr: read ``hr/`` and ``truth/hr_tumour_fraction``; ``False`` leaves them ``None``.

    Raises:
        DataError: naming the file and key for a missing key, wrong shape or dtype, NaN/inf rows, a
            wrong format attribute or an invalid bag.
    """
    path = Path(path)
    with open_h5(path) as f:
        if f.attrs.get("format") != BAG_FORMAT:
            raise DataError(
                path, f"root attribute 'format' must be {BAG_FORMAT!r}, got {f.attrs.get('format')!r}"
            )
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise DataError(path, f"format_version {version} is not supported (expected {FORMAT_VERSION})")
        if "slide_id" not in f.attrs or "label" not in f.attrs:
            raise DataError(path, "root attributes 'slide_id' and 'label' are required")
        class_names = _attr_json(f, "class_names", path)
        meta = _attr_json(f, "meta", path)
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
            raise DataError(path, "root attribute 'class_names' must be a JSON list of strings")
        if not isinstance(meta, dict):
            raise DataError(path, "root attribute 'meta' must be a JSON object")
        z = read_h5_array(f, "lr/features", path, kind="float", shape=(None, None), finite_rows=True)
        n, d = z.shape
        coords = read_h5_array(f, "lr/coords", path, kind="int", shape=(n, 2))
        u = mask = hr_coords = hr_tf = None
        if hr and "hr" in f:
            u = read_h5_array(f, "hr/features", path, kind="float", shape=(n, None, d))
            k = u.shape[1]
            mask = read_h5_array(f, "hr/mask", path, kind="bool", shape=(n, k))
            if "hr/coords" in f:
                hr_coords = read_h5_array(f, "hr/coords", path, kind="int", shape=(n, k, 2))
            if "truth/hr_tumour_fraction" in f:
                hr_tf = read_h5_array(f, "truth/hr_tumour_fraction", path, kind="float", shape=(n, k))
        tf = None
        if "truth/tumour_fraction" in f:
            tf = read_h5_array(f, "truth/tumour_fraction", path, kind="float", shape=(n,), finite_rows=True)
        views = {}
        if "views" in f:
            for name in sorted(f["views"]):
                views[name] = read_h5_array(
                    f, f"views/{name}", path, kind="float", shape=(n, None), finite_rows=True
                )
        bag = SlideBag(
            slide_id=str(f.attrs["slide_id"]),
            features=z,
            coords=coords,
            label=int(f.attrs["label"]),
            class_names=tuple(class_names),
            hr_features=u,
            hr_mask=mask,
            hr_coords=hr_coords,
            tumour_fraction=tf,
            hr_tumour_fraction=hr_tf,
            meta=SlideMeta.from_dict(meta),
            views=views,
        )
    return bag.validate(str(path))


def write_dataset_index(
    root: str | Path,
    name: str,
    class_names: Sequence[str],
    labels: Mapping[str, int],
    splits: Sequence[Mapping[str, Sequence[str]]],
) -> Path:
    """Write ``labels.csv``, ``splits/split_<f>.json`` and, last, ``dataset.json``, each atomically.

    ``dataset.json`` is what marks a folder as a native dataset, so it is written after the rest.
    Returns ``root``.
    """
    root = Path(root)
    write_labels_csv(root / "labels.csv", labels, class_names)
    splits_dir = root / "splits"
    for fold, split in enumerate(splits):
        atomic_write_json(
            splits_dir / f"split_{fold}.json", {s: list(split.get(s, [])) for s in ("train", "val", "test")}
        )
    if splits_dir.is_dir():  # folds left over from an older index with more folds
        for p in splits_dir.glob("split_*.json"):
            stem = p.stem.removeprefix("split_")
            if stem.isdigit() and int(stem) >= len(splits):
                p.unlink()
    atomic_write_json(
        root / "dataset.json",
        {"name": name, "class_names": list(class_names), "format": FORMAT, "format_version": FORMAT_VERSION},
    )
    return root


class NativeDataset(FolderDataset):
    """A dataset folder in the native format (see the module docstring).

    Raises:
        DataError: bad ``dataset.json``, labels naming unknown classes or slides without a file, or
            splits naming unknown slides.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        index_path = root / "dataset.json"
        if not index_path.is_file():
            raise DataError(index_path, "dataset.json not found: not a wsigym dataset folder")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(index_path, f"not valid JSON ({e})") from e
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise DataError(index_path, f'expected a JSON object with "format": {FORMAT!r}')
        if index.get("format_version") != FORMAT_VERSION:
            raise DataError(
                index_path, f"format_version must be {FORMAT_VERSION}, got {index.get('format_version')!r}"
            )
        for key in ("name", "class_names"):
            if key not in index:
                raise DataError(index_path, f"key {key!r} is missing")
        class_names = tuple(index["class_names"])
        labels, _ = read_labels_csv(root / "labels.csv", class_names)
        for sid in labels:
            if not slide_path(root, sid).is_file():
                raise DataError(
                    slide_path(root, sid), f"slide {sid!r} is listed in labels.csv but its file is missing"
                )
        splits = read_json_splits(root / "splits", labels)
        super().__init__(root, str(index["name"]), class_names, labels, splits, root / "splits")

    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        """Read ``slides/<slide_id>.h5``; checks that its id, label and classes match the index."""
        label = self.label(slide_id)
        path = slide_path(self.root, slide_id)
        bag = read_bag(path, hr=hr)
        if bag.slide_id != slide_id:
            raise DataError(path, f"root attribute slide_id is {bag.slide_id!r}, expected {slide_id!r}")
        if bag.label != label or bag.class_names != self.class_names:
            raise DataError(
                path,
                f"label {bag.label} of classes {list(bag.class_names)} does not match labels.csv "
                f"({label} of {list(self.class_names)})",
            )
        return bag
