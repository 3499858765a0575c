"""Reading the HDF5 feature files of dataset folders: :func:`open_h5` and :func:`read_h5_array`, whose errors name
the file, the key and what was expected."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsigym.errors import DataError


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
