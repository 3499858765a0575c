r"""The cache root and safe publishing into it: atomic files, a build lock, stale temp cleanup.

Everything wsigym computes once and reuses across processes lives under one folder,
:func:`cache_root` (``$WSIGYM_CACHE``, default ``~/.cache/wsigym``): the synth-c16 dataset folders and
the per-slide precomputation of the environments (:mod:`wsigym.envs.precompute_cache`).

**Readers never lock.** Every file is published whole (:mod:`wsigym.io`): written to a temp file in the
same folder (``.<name>.<pid>.<random>.tmp``), given the normal ``0644`` mode (less the umask) and moved
into place with ``os.replace``; a failure removes the temp file. So a reader sees either no file or a
complete one.

**Builders cooperate.** A builder takes :func:`build_lock` on what it builds (an OS file lock,
``filelock``, released by the kernel when the process dies, even by ``kill -9``), then looks again for
the result (another process may have built it while it waited) and builds only what is still missing.
Concurrent builders of the same thing therefore build it once: one builds, the others wait and reuse.
While holding the lock, a builder removes the temp files and folders a killed builder left behind
(:func:`remove_stale_temps`): every writer of a cache folder holds its lock, so any temp found then is stale.

**Unwritable caches.** A cache that must be built but whose folder cannot be written raises
:class:`CacheError`, one line naming the folder and ``WSIGYM_CACHE``. A complete cache on a read-only
folder is still read (reading needs no lock).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

from wsigym.errors import DataError
from wsigym.io import atomic_write, is_temp, is_temp_of

#: Environment variable naming the cache root.
CACHE_ENV = "WSIGYM_CACHE"
_LOCK_SUFFIX = ".lock"


class CacheError(DataError):
    """A cache folder that cannot be created or written (names the folder and ``WSIGYM_CACHE``)."""

    def __init__(self, folder: str | Path, why: str) -> None:
        super().__init__(
            folder,
            f"cache folder is not writable ({why}); set {CACHE_ENV} to a writable folder "
            f"(it is {os.environ.get(CACHE_ENV, 'unset')!r})",
        )


def cache_root() -> Path:
    """``$WSIGYM_CACHE`` if set, else ``~/.cache/wsigym`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wsigym"


def ensure_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) if needed.

    Raises:
        CacheError: when it cannot be created.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(folder, exc.strerror or type(exc).__name__) from None
    return folder


def publish_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Publish ``path`` into a cache folder atomically (:func:`wsigym.io.atomic_write`: temp file in the
    same folder, ``0644`` less the umask, ``os.replace``; removed on any error).

    Raises:
        CacheError: when the folder cannot be created or written.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        return atomic_write(path, write)
    except PermissionError as exc:
        raise CacheError(path.parent, exc.strerror or "permission denied") from None


def remove_stale_temps(folder: str | Path, name: str | None = None) -> int:
    """Remove the temp files and folders in ``folder`` left by killed builders (those of ``name``
    only, or every one made by :func:`wsigym.io.temp_name`). Call it only while holding the folder's
    :func:`build_lock`. Returns how many were removed."""
    folder = Path(folder)
    removed = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for p in entries:
        if not (is_temp_of(p, name) if name is not None else is_temp(p)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed += 1
    return removed


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target``: ``.<name>.lock`` next to it (kept: removing lock files is racy)."""
    target = Path(target)
    return target.with_name(f".{target.name}{_LOCK_SUFFIX}")


@contextlib.contextmanager
def build_lock(target: str | Path, what: str | None = None) -> Iterator[None]:
    """Hold the inter-process lock of ``target`` (a file or folder under construction).

    Blocks while another process holds it, after printing one line to stderr saying what it waits
    for (``what``, default the target's path).

    Raises:
        CacheError: when the lock file cannot be created (read-only or missing permissions).
    """
    target = Path(target)
    ensure_dir(target.parent)
    lock = filelock.FileLock(str(lock_path(target)), mode=0o666 & ~0o022)
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            print(
                f"wsigym: waiting for another process to finish building {what or target}",
                file=sys.stderr,
                flush=True,
            )
            lock.acquire()
    except PermissionError as exc:
        raise CacheError(target.parent, exc.strerror or "permission denied") from None
    except OSError as exc:
        if isinstance(exc, filelock.Timeout):
            raise
        raise CacheError(target.parent, exc.strerror or type(exc).__name__) from None
    try:
        yield
    finally:
        lock.release()
