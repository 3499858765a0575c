"""Train/val/test splits of dataset folders, over several folds.

- :func:`read_clam_splits`: CLAM's ``splits_<k>.csv`` (columns ``,train,val,test``, ragged).
- :func:`read_json_splits`: ``split_<fold>.json`` (native: ``train/val/test``; SASHA:
  ``train_names/val_names/test_names``).
- :func:`make_splits`: deterministic stratified train/val/test splits for ``n_folds`` folds.
- :func:`resolve_splits`: whichever of these a reader's ``splits_dir`` calls for.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from wsigym.data.dataset import SPLITS
from wsigym.data.labels_csv import read_utf8_text
from wsigym.errors import DataError


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


def _split_files(splits_dir: str | Path, pattern: str, what: str) -> list[Path]:
    """The files of ``splits_dir`` matching ``pattern`` (one number group), ordered by that number.

    Raises:
        DataError: when the folder is missing or holds no such file (``what`` names them).
    """
    folder = Path(splits_dir)
    if not folder.is_dir():
        raise DataError(folder, f"splits folder not found (expected {what} files)")
    files = _numbered(folder, pattern)
    if not files:
        raise DataError(folder, f"no {what} files")
    return [path for _, path in files]


def read_clam_splits(splits_dir: str | Path, known: Iterable[str]) -> list[dict[str, list[str]]]:
    """Read CLAM's ``splits_<k>.csv`` files (header ``,train,val,test``; shorter columns are blank).

    Folds are ordered by ``k``. Raises :class:`DataError` for a missing folder, no split files, a
    missing column or a slide that is not in ``known``.
    """
    known = list(known)
    splits = []
    for path in _split_files(splits_dir, r"splits_(\d+)\.csv", "splits_<k>.csv"):
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
    known = list(known)
    splits = []
    for path in _split_files(splits_dir, r"split_(\d+)\.json", "split_<n>.json"):
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
