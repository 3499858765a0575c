r"""Content digests of dataset files: what the disk caches of derived data are keyed by.

A digest here is a SHA-256 hex string that changes whenever the bytes it covers change, so a cache
keyed by it is invalidated by any change of the data (a different digest is a different key).

:func:`tree_digest` hashes every regular file under some folders (names and contents; temp files of
atomic writers are skipped). Hashing gigabytes of features takes a while, so each file's hash is
memoised in ``<cache root>/digests/files.json`` keyed by its absolute path, size, modification time
(ns) and inode: a warm start only ``stat``\ s the files. A file rewritten in place with the same
size within the filesystem's timestamp resolution would keep its old hash; tools that write through
a temp file and ``os.replace`` (every writer of this project) change the inode, which is part of the key.

:func:`options_digest` fingerprints the loader options of a dataset object (its plain attributes), so
two readers of the same folder that read different files (e.g. two encoders of one TRIDENT job) get
different keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wsigym.cachedir import CacheError, build_lock, cache_root, publish_file, remove_stale_temps

MEMO_FILE = "files.json"
_CHUNK = 1 << 22


def sha256_hex(*parts: str | bytes) -> str:
    """SHA-256 of ``parts`` (each length-prefixed, so ``("ab", "c") != ("a", "bc")``)."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _files(roots: Iterable[Path]) -> list[tuple[str, Path]]:
    """``(name, path)`` of every regular file under ``roots`` (a root may be a file), sorted."""
    out: list[tuple[str, Path]] = []
    for i, root in enumerate(sorted({Path(r).resolve() for r in roots})):
        if root.is_file():
            out.append((f"{i}:{root.name}", root))
            continue
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not _is_temp(d))
            for name in sorted(names):
                p = Path(folder) / name
                if not _is_temp(name) and p.is_file():
                    out.append((f"{i}:{p.relative_to(root).as_posix()}", p))
    return out


class _Memo:
    """The per-file hash memo (``{abs path: [size, mtime_ns, inode, sha256]}``)."""

    def __init__(self) -> None:
        self.path = cache_root() / "digests" / MEMO_FILE
        self.entries = self._load()
        self.dirty = False

    def _load(self) -> dict[str, list[Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def digest(self, path: Path) -> str:
        st = path.stat()
        sig = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self.entries.get(str(path))
        if isinstance(entry, list) and len(entry) == 4 and entry[:3] == sig:
            return str(entry[3])
        value = file_sha256(path)
        self.entries[str(path)] = [*sig, value]
        self.dirty = True
        return value

    def save(self) -> None:
        """Merge into the memo on disk (under its lock; other processes may have added entries)."""
        if not self.dirty:
            return
        with build_lock(self.path, "the file digest memo"):
            remove_stale_temps(self.path.parent, self.path.name)
            merged = {**self._load(), **self.entries}
            text = json.dumps(merged, sort_keys=True)
            publish_file(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self.dirty = False


def tree_digest(roots: Iterable[str | Path]) -> str:
    """Digest of the names and contents of every regular file under ``roots`` (files or folders).
    The memo is saved when the cache root is writable (else the hashes are recomputed next time)."""
    memo = _Memo()
    parts = [f"{name}\0{memo.digest(path)}" for name, path in _files(Path(r) for r in roots)]
    with contextlib.suppress(CacheError):  # an unwritable cache only loses the memo (a cold start next time)
        memo.save()
    return sha256_hex("tree", *parts)


def _plain(value: Any, paths: list[Path]) -> Any:
    """``value`` as JSON-able plain data (paths collected into ``paths``); TypeError for other objects."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        paths.append(value)
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), paths) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v, paths) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, paths) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v, paths) for v in value)
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def options_digest(obj: object) -> tuple[str, list[Path]] | None:
    """Digest of ``obj``'s class and public attributes, and the paths among them; None when an
    attribute is not plain data (then the object cannot be fingerprinted)."""
    paths: list[Path] = []
    try:
        plain = _plain({k: v for k, v in vars(obj).items() if not k.startswith("_")}, paths)
    except TypeError:
        return None
    cls = type(obj)
    return sha256_hex(f"{cls.__module__}.{cls.__qualname__}", json.dumps(plain, sort_keys=True)), paths
