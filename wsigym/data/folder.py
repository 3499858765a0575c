"""Dataset folders: labels CSVs, split files and deterministic split making.

Every folder reader (native, CLAM, TRIDENT, SASHA) shares these pieces:

- :func:`read_labels_csv`: ``slide_id,label`` (or CLAM's ``case_id,slide_id,label``, or TRIDENT's
  ``wsi`` column, whose file extension is dropped) with the label given as a class NAME.
- :func:`read_clam_splits`: CLAM's ``splits_<k>.csv`` (columns ``,train,val,test``, ragged).
- :func:`read_json_splits`: ``split_<fold>.json`` (native: ``train/val/test``; SASHA:
  ``train_names/val_names/test_names``).
- :func:`make_splits`: deterministic stratified train/val/test splits for ``n_folds`` folds.
- :class:`FolderDataset`: the :class:`~wsigym.data.dataset.SlideDataset` base of the folder readers.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsigym.data.content_digest import options_digest, sha256_hex, tree_digest
from wsigym.data.dataset import SPLITS, SlideDataset
from wsigym.errors import DataError
from wsigym.io import atomic_write_text

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".czi", ".h5")


# ---------------------------------------------------------------------------------------------- reading
def read_utf8_text(path: str | Path, what: str) -> str:
    """The text of ``path`` decoded as UTF-8 (a byte-order mark is dropped).

    Raises:
        DataError: naming the file when it cannot be read or is not UTF-8 (with the offending byte).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read {what} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            path,
            f"{what} must be UTF-8 text; byte 0x{data[e.start]:02x} at offset {e.start} is not "
            "(re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8)",
        ) from None


def check_slide_id(slide_id: str, source: str | Path) -> str:
    """Return ``slide_id`` if it can be a file name (no path separators, no leading dot)."""
    if not slide_id or "/" in slide_id or "\\" in slide_id or slide_id.startswith(".") or "\x00" in slide_id:
        raise DataError(source, f"slide id {slide_id!r} cannot be used as a file name")
    return slide_id


# ---------------------------------------------------------------------------------------------- labels
def slide_stem(name: str) -> str:
    """``"tumor_001.tif"`` -> ``"tumor_001"``; names without a known slide extension are kept."""
    for ext in SLIDE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def read_labels_csv(
    path: str | Path, class_names: Sequence[str] | None = None
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Read a labels CSV into ``({slide_id: class index}, class_names)``.

    The id column is ``slide_id`` or, failing that, TRIDENT's ``wsi`` (file name; the extension is
    dropped). The ``label`` column holds class names. Without ``class_names`` the classes are the
    sorted distinct labels.

    Raises:
        DataError: missing file or column, empty file, duplicate slide with two labels, or a label
            that is not one of ``class_names``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "labels CSV not found (expected columns slide_id,label or wsi,label)")
    text = read_utf8_text(path, "a labels CSV")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except csv.Error as e:
        raise DataError(path, f"not a readable CSV file (line {reader.line_num}: {e})") from None
    id_col = "slide_id" if "slide_id" in fields else "wsi" if "wsi" in fields else None
    if id_col is None or "label" not in fields:
        raise DataError(path, f"expected columns 'slide_id' (or 'wsi') and 'label', found {fields}")
    if not rows:
        raise DataError(path, "labels CSV has no rows")
    names: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        sid = row[id_col]
        if id_col == "wsi":
            sid = slide_stem(sid)
        label = row["label"]
        if not sid or not label:
            raise DataError(path, f"line {line}: empty {id_col!r} or 'label'")
        check_slide_id(sid, f"{path} line {line}")
        if sid in names and names[sid] != label:
            raise DataError(path, f"line {line}: slide {sid!r} has two labels ({names[sid]!r}, {label!r})")
        names[sid] = label
    classes = tuple(class_names) if class_names is not None else tuple(sorted(set(names.values())))
    index = {c: i for i, c in enumerate(classes)}
    labels: dict[str, int] = {}
    for sid, label in names.items():
        if label not in index:
            raise DataError(
                path, f"label {label!r} of slide {sid!r} is not one of the classes {list(classes)}"
            )
        labels[sid] = index[label]
    return labels, classes


def write_labels_csv(path: str | Path, labels: Mapping[str, int], class_names: Sequence[str]) -> Path:
    """Write ``slide_id,label`` (class names), sorted by slide id, atomically."""
    lines = ["slide_id,label"]
    for sid in sorted(labels):
        lines.append(f"{sid},{class_names[labels[sid]]}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- splits
def check_splits(
    splits: Sequence[Mapping[str, Sequence[str]]], known: Iterable[str], source: str | Path
) -> list[dict[str, list[str]]]:
    """Check that every split names known slides, once; return plain ``list[dict[str, list]]``."""
    known_set = set(known)
    out: list[dict[str, list[str]]] = []
    for fold, split in enumerate(splits):
        seen: dict[str, str] = {}
        clean: dict[str, list[str]] = {}
        for name in SPLITS:
            ids = [str(s) for s in split.get(name, [])]
            for sid in ids:
                if sid not in known_set:
                    raise DataError(
                        source, f"fold {fold} split {name!r} names slide {sid!r}, which has no label/features"
                    )
                if sid in seen:
                    raise DataError(
                        source, f"fold {fold}: slide {sid!r} is in both {seen[sid]!r} and {name!r}"
                    )
                seen[sid] = name
            clean[name] = ids
        out.append(clean)
    if not out:
        raise DataError(source, "no splits found")
    return out


def _numbered(folder: Path, pattern: str) -> list[tuple[int, Path]]:
    rx = re.compile(pattern)
    found = []
    for p in folder.iterdir():
        m = rx.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_clam_splits(splits_dir: str | Path, known: Iterable[str]) -> list[dict[str, list[str]]]:
    """Read CLAM's ``splits_<k>.csv`` files (header ``,train,val,test``; shorter columns are blank).

    Folds are ordered by ``k``. Raises :class:`DataError` for a missing folder, no split files, a
    missing column or a slide that is not in ``known``.
    """
    folder = Path(splits_dir)
    if not folder.is_dir():
        raise DataError(folder, "splits folder not found (expected splits_<k>.csv files)")
    files = _numbered(folder, r"splits_(\d+)\.csv")
    if not files:
        raise DataError(folder, "no splits_<k>.csv files")
    known = list(known)
    splits = []
    for _, path in files:
        reader = csv.reader(io.StringIO(read_utf8_text(path, "a CLAM splits CSV"), newline=""))
        try:
            header = [h.strip() for h in next(reader, [])]
            rows = list(reader)
        except csv.Error as e:
            raise DataError(path, f"not a readable CSV file (line {reader.line_num}: {e})") from None
        cols = {name: header.index(name) for name in SPLITS if name in header}
        if set(cols) != set(SPLITS):
            raise DataError(path, f"expected columns ',train,val,test', found {header}")
        split: dict[str, list[str]] = {name: [] for name in SPLITS}
        for row in rows:
            for name, c in cols.items():
                if c < len(row) and row[c].strip():
                    split[name].append(row[c].strip())
        splits.append(check_splits([split], known, path)[0])
    return splits


def read_json_splits(
    splits_dir: str | Path,
    known: Iterable[str],
    keys: Mapping[str, str] | None = None,
) -> list[dict[str, list[str]]]:
    """Read ``split_<n>.json`` files, ordered by ``n``.

    Args:
        keys: JSON key of each split, e.g. SASHA's ``{"train": "train_names", "val": "val_names",
            "test": "test_names"}``; default ``train/val/test``.
    """
    keys = dict(keys or {s: s for s in SPLITS})
    folder = Path(splits_dir)
    if not folder.is_dir():
        raise DataError(folder, "splits folder not found (expected split_<n>.json files)")
    files = _numbered(folder, r"split_(\d+)\.json")
    if not files:
        raise DataError(folder, "no split_<n>.json files")
    known = list(known)
    splits = []
    for _, path in files:
        try:
            obj = json.loads(read_utf8_text(path, "a JSON splits file"))
        except json.JSONDecodeError as e:
            raise DataError(path, f"not a readable JSON file: {e}") from e
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object with keys {sorted(keys.values())}")
        split = {}
        for name, key in keys.items():
            if key not in obj or not isinstance(obj[key], list):
                raise DataError(path, f"key {key!r} (a list of slide ids) is missing")
            split[name] = obj[key]
        splits.append(check_splits([split], known, path)[0])
    return splits


def make_splits(
    labels: Mapping[str, int],
    n_folds: int = 5,
    val_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
) -> list[dict[str, list[str]]]:
    """Deterministic stratified Monte-Carlo splits.

    For fold ``f`` the slides of each class (sorted by id) are shuffled with
    ``numpy.random.default_rng([seed, f])``; the first ``round(test_frac * n_c)`` go to test, the next
    ``round(val_frac * n_c)`` to val, the rest to train (at least one slide per class stays in train).
    Each split is returned sorted by id.
    """
    if n_folds < 1:
        raise DataError("make_splits", f"n_folds must be >= 1, got {n_folds}")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise DataError(
            "make_splits",
            f"need 0 <= val_frac, test_frac and val_frac + test_frac < 1, got {val_frac}, {test_frac}",
        )
    by_class: dict[int, list[str]] = {}
    for sid in sorted(labels):
        by_class.setdefault(int(labels[sid]), []).append(sid)
    splits = []
    for fold in range(n_folds):
        rng = np.random.default_rng([seed, fold])
        split: dict[str, list[str]] = {s: [] for s in SPLITS}
        for c in sorted(by_class):
            ids = by_class[c]
            order = [ids[i] for i in rng.permutation(len(ids))]
            n_test = min(round(test_frac * len(ids)), max(0, len(ids) - 1))
            n_val = min(round(val_frac * len(ids)), max(0, len(ids) - 1 - n_test))
            split["test"] += order[:n_test]
            split["val"] += order[n_test : n_test + n_val]
            split["train"] += order[n_test + n_val :]
        splits.append({s: sorted(v) for s, v in split.items()})
    return splits


# ---------------------------------------------------------------------------------------------- base
class FolderDataset(SlideDataset):
    """A dataset whose labels and splits are known up front; subclasses implement :meth:`load`.

    Attributes:
        root: the dataset folder.
        labels: ``{slide_id: class index}``.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        class_names: Sequence[str],
        labels: Mapping[str, int],
        splits: Sequence[Mapping[str, Sequence[str]]],
        splits_source: str | Path,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.class_names = tuple(class_names)
        self.labels = dict(labels)
        self.splits = check_splits(splits, self.labels, splits_source)

    def slide_ids(self) -> list[str]:
        return sorted(self.labels)

    def label(self, slide_id: str) -> int:
        if slide_id not in self.labels:
            raise DataError(self.root, f"unknown slide id {slide_id!r}")
        return self.labels[slide_id]

    def content_digest(self, slide_id: str) -> str | None:
        """Digest of every file under the dataset folder and the other folders among the reader's
        options (e.g. CLAM's ``hr_root``), of those options and of ``slide_id``
        (:func:`~wsigym.data.content_digest.tree_digest`; computed once per instance, file hashes
        memoised across processes). None when an option is not plain data."""
        if not hasattr(self, "_folder_digest"):
            options = options_digest(self)
            if options is None:
                self._folder_digest = None
            else:
                key, paths = options
                found = {p.resolve() for p in (self.root, *paths) if p.exists()}
                roots = [p for p in found if not any(q != p and p.is_relative_to(q) for q in found)]
                self._folder_digest = sha256_hex(key, tree_digest(roots))
        if self._folder_digest is None:
            return None
        self.label(slide_id)  # unknown ids raise
        return sha256_hex(self._folder_digest, slide_id)


def resolve_splits(
    splits_dir: str | Path | None,
    labels: Mapping[str, int],
    *,
    json_keys: Mapping[str, str] | None = None,
    n_folds: int = 5,
    seed: int = 0,
) -> list[dict[str, list[str]]]:
    """Read splits from a folder of ``splits_<k>.csv`` or ``split_<n>.json``; make them when ``None``."""
    if splits_dir is None:
        return make_splits(labels, n_folds=n_folds, seed=seed)
    folder = Path(splits_dir)
    if folder.is_dir() and _numbered(folder, r"splits_(\d+)\.csv"):
        return read_clam_splits(folder, labels)
    return read_json_splits(folder, labels, keys=json_keys)


# ---------------------------------------------------------------------------------------------- HDF5
def read_h5_array(
    group: Any,
    key: str,
    source: str | Path,
    *,
    kind: str,
    shape: Sequence[int | None],
    finite_rows: bool = False,
) -> np.ndarray:
    """Read ``group[key]`` and check it, raising one :class:`DataError` naming ``source`` and ``key``.

    Args:
        group: an open ``h5py.File`` or ``h5py.Group``.
        kind: ``"float"`` (returned as float32), ``"int"`` (returned as int64; integral floats are
            accepted, as older CLAM files store float coordinates) or ``"bool"``.
        shape: expected shape; ``None`` entries match any size.
        finite_rows: check that every row (first axis) is free of NaN/inf.
    """
    import h5py

    if key not in group:
        raise DataError(source, f"dataset {key!r} is missing (expected shape {_shape_str(shape)})")
    obj = group[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(source, f"{key!r} is a group, expected a dataset of shape {_shape_str(shape)}")
    arr = obj[()]
    if arr.ndim != len(shape) or any(e is not None and e != a for e, a in zip(shape, arr.shape)):
        raise DataError(source, f"dataset {key!r} has shape {arr.shape}, expected {_shape_str(shape)}")
    if kind == "float":
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(source, f"dataset {key!r} has dtype {arr.dtype}, expected float16/float32")
        arr = arr.astype(np.float32, copy=False)
    elif kind == "int":
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            arr = arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(source, f"dataset {key!r} has dtype {arr.dtype}, expected integer level-0 pixels")
        arr = arr.astype(np.int64, copy=False)
    elif kind == "bool":
        if arr.dtype != np.bool_:
            raise DataError(source, f"dataset {key!r} has dtype {arr.dtype}, expected bool")
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if finite_rows and arr.size:
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        if bad.any():
            raise DataError(
                source,
                f"dataset {key!r} has NaN/inf in {int(bad.sum())} rows (first: row {int(np.argmax(bad))})",
            )
    return arr


def _shape_str(shape: Sequence[int | None]) -> str:
    return (
        "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    )


def open_h5(path: str | Path) -> Any:
    """Open an HDF5 file read-only, turning a missing or unreadable file into :class:`DataError`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, f"not a readable HDF5 file ({e})") from e
