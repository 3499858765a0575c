"""Atomic file writes: every text, bytes, JSON, HDF5 or safetensors file wsigym and zoo write goes here.

**Atomic.** :func:`atomic_write` runs ``write(tmp)`` on a temp file in the target's folder, named
``.<name>.<pid>.<random>.tmp`` (:func:`temp_name`), then moves it into place with ``os.replace``; on
any error (or ``KeyboardInterrupt``) the temp file is removed. A reader sees either the old file or
the complete new one, never a half-written one. A folder is published the same way (:func:`atomic_folder`:
built as a temp folder beside it, then renamed into place by :func:`replace_folder`).

**Mode.** A replaced file keeps its permissions; a new file gets ``0644`` less the umask, as ``open()``
would give it (:func:`new_file_mode`; ``tempfile.mkstemp`` alone would leave ``0600``).

**JSON, one NaN policy.** :func:`json_ready` maps NaN and +-inf to ``null`` (strict JSON that any reader
accepts), numpy scalars and arrays to Python numbers and lists, paths to strings and mapping keys to
strings; :func:`dumps_json` then refuses anything else that is not JSON (``allow_nan=False``). Readers
that need NaN back (``null`` metric values) convert it where they read (e.g.
:meth:`wsigym.evaluate.EvalReport.from_json`).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Suffix of every temp file made by :func:`temp_name`.
TEMP_SUFFIX = ".tmp"


def new_file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0644`` less the umask (``mkstemp`` would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o644 & ~umask


def temp_name(name: str) -> str:
    """A temp file or folder name for publishing ``name``: ``.<name>.<pid>.<random>.tmp``."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_temp(path: Path) -> bool:
    """True for any name made by :func:`temp_name` (a dot file ending in ``.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def is_temp_of(path: Path, name: str) -> bool:
    """True for a name made by :func:`temp_name` for ``name``."""
    return path.name.startswith(f".{name}.") and path.name.endswith(TEMP_SUFFIX)


def temp_writer_pid(path: Path, name: str) -> int | None:
    """The process id recorded in a :func:`temp_name` of ``name``, or None when ``path`` is not one."""
    if not is_temp_of(path, name):
        return None
    middle = path.name[len(name) + 2 : -len(TEMP_SUFFIX)]
    pid = middle.split(".", 1)[0]
    return int(pid) if pid.isdigit() else None


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Publish ``path`` atomically (module docstring): ``write(tmp)`` writes a temp file in the same
    folder (created with its parents if needed), which gets ``path``'s mode (or :func:`new_file_mode`)
    and replaces ``path``; on any error the temp file is removed and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_files(files: Mapping[Path, bytes]) -> None:
    """Write several files, each atomically as in :func:`atomic_write`, all content first: every temp
    file is written before the first ``os.replace``, so an error while writing leaves every target as
    it was (and no temp file behind)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(temp_name(path.name))
            staged.append((tmp, path))
            tmp.write_bytes(data)
            os.chmod(tmp, _mode_for(path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise


def replace_folder(tmp: str | Path, path: str | Path) -> Path:
    """Put the complete folder ``tmp`` at ``path`` (same parent folder), replacing whatever is there, by renames
    only: the old ``path`` is renamed to a :func:`temp_name`, ``tmp`` renamed into place, then the old one removed.
    A reader finds the old folder, briefly none, or the new one; never a partly written one."""
    path = Path(path)
    old = path.with_name(temp_name(path.name + ".old"))
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Publish the folder ``path`` atomically: yields a new empty temp folder beside it (:func:`temp_name`,
    the normal folder mode), to be filled in the ``with`` block; when the block ends without error the temp
    folder replaces ``path`` (:func:`replace_folder`), otherwise it is removed and the error propagates.

    Example::

        with atomic_folder(cache / "slides-v2") as tmp:
            (tmp / "index.json").write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    tmp.mkdir()  # not mkdtemp, which gives 0700
    try:
        yield tmp
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a successful rename


def _mode_for(path: Path) -> int:
    """The mode ``path``'s replacement gets: its current one, or :func:`new_file_mode` for a new file."""
    return path.stat().st_mode & 0o777 if path.is_file() else new_file_mode()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (:func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def json_ready(value: Any) -> Any:
    """``value`` with the one NaN policy (module docstring): NaN/inf -> None, numpy scalars and arrays
    -> Python, tuples -> lists, paths -> str, mapping keys -> str, recursively."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy scalars and arrays
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``obj`` as strict JSON text ending in a newline, after :func:`json_ready`.

    Raises:
        TypeError: when ``obj`` holds something JSON cannot represent (names the type).
    """
    return json.dumps(json_ready(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as strict JSON (:func:`dumps_json`) to ``path`` atomically."""
    return atomic_write_text(path, dumps_json(obj, indent=indent, sort_keys=sort_keys))
