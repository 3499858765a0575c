r"""The disk cache of per-slide precomputation: the zoom oracle ``V`` and the evidence table.

Every process that builds a :class:`~wsigym.envs.slide_source.SlideSource` (the environments, ``train``,
``evaluate``, ``demo``, the tests) needs ``V = HAFED.aggregate(U, hr_mask)`` of every slide of its split,
and ``reward="evidence"`` needs HAFED's probabilities on every row of ``V``. Both are pure functions of
the slide features and the HAFED weights, so they are computed once and kept under
``<cache root>/precompute/`` (:func:`wsigym.cachedir.cache_root`, ``$WSIGYM_CACHE``):

===============================================  ===========================================
file                                             holds
===============================================  ===========================================
``slides-<hafed>-<device>/<slide>.safetensors``  one slide's ``z``, ``v``, ``coords``, ``grid``, ``tumour``
``evidence/<split>.safetensors``                 ``evidence (sum N, C)`` float32 of one split
===============================================  ===========================================

**Keys are content digests.** ``<hafed>`` is :func:`module_digest` of the HAFED weights (class,
parameter and buffer names, dtypes, shapes and bytes); ``<slide>`` digests the format version, the
HAFED digest and :meth:`SlideDataset.content_digest <wsigym.data.dataset.SlideDataset.content_digest>`
(synth-c16: its config, seed and the slide's manifest checksum; folder datasets: the hashes of their
files); ``<split>`` digests the split's slide digests in order, the device type and the digest of the
HAFED that classifies the rows. ``<device>`` is the device type that computed the rows (``cpu``,
``cuda``), so a cached row is bit-identical to what the same device computes fresh. Changing the
weights or the data changes the key, so a stale entry is never read (old entries stay on disk until
the folder is deleted).
A dataset whose :meth:`content_digest` is None (e.g. an in-memory dataset) is not cached on disk.

**Safe concurrency** (:mod:`wsigym.cachedir`): readers read complete files without locking; a builder
holds the folder's (or file's) lock, reads again what other processes published meanwhile, computes
only what is missing and publishes each file atomically. A file that cannot be read back (corrupt, or
of the wrong shape) counts as missing and is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from wsigym.cachedir import build_lock, cache_root, publish_file, remove_stale_temps
from wsigym.data.content_digest import sha256_hex

#: Bumped when a cached quantity's definition or file layout changes (part of every key).
FORMAT_VERSION = 1
PRECOMPUTE_FOLDER = "precompute"


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's class and ``state_dict`` (names, dtypes, shapes and bytes, sorted by name)."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def precompute_root() -> Path:
    """``<cache root>/precompute``."""
    return cache_root() / PRECOMPUTE_FOLDER


def _read_arrays(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """The float32 arrays ``shapes`` of a safetensors file; None when it is missing, unreadable or
    does not hold exactly those arrays with those shapes."""
    if not path.is_file():
        return None
    try:
        arrays = load_file(str(path))
    except Exception:  # safetensors raises its own error types for corrupt files
        return None
    if set(arrays) != set(shapes):
        return None
    for name, shape in shapes.items():
        a = arrays[name]
        if a.dtype != np.float32 or tuple(a.shape) != tuple(shape):
            return None
    return arrays


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    data = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    publish_file(path, lambda tmp: save_file(data, str(tmp)))


#: The arrays of one slide's record: name -> (dtype, trailing shape; ``None`` = the feature width d).
RECORD: dict[str, tuple[type, tuple[int | None, ...]]] = {
    "z": (np.float32, (None,)),
    "v": (np.float32, (None,)),
    "coords": (np.float32, (2,)),
    "grid": (np.int64, (2,)),
    "tumour": (np.float32, ()),
}
_SAFETENSORS_DTYPES = {"F32": np.float32, "I64": np.int64}


def _header(path: Path) -> tuple[int, dict[str, dict]] | None:
    """``(data start, {name: entry})`` of a safetensors file whose entries are consistent with its size;
    None when it is missing or malformed."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            length = int.from_bytes(fh.read(8), "little")
            if not 0 < length <= min(1 << 20, size - 8):
                return None
            header = json.loads(fh.read(length))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    for entry in header.values():
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
            start, stop = (int(x) for x in entry["data_offsets"])
            count = math.prod(int(x) for x in entry["shape"])
        except (KeyError, TypeError, ValueError):
            return None
        if stop - start != count * dtype.itemsize or start < 0 or 8 + length + stop > size:
            return None
    return 8 + length, header


class SlideRecordCache:
    """The cached per-slide records for one HAFED on one device type: ``Z (N, d)``, ``V (N, d)``,
    normalised ``coords (N, 2)``, grid cells ``(N, 2)`` int64 and ``tumour (N,)`` (the arrays a
    :class:`~wsigym.envs.slide_source.SlideSource` holds), so a warm start neither regenerates nor
    reads the slide's features.

    Args:
        hafed: the HAFED whose level 1 computes ``V`` (only its weights are read, for the key).
        device_type: ``"cpu"`` or ``"cuda"``: where ``V`` is computed.
    """

    def __init__(self, hafed: torch.nn.Module, device_type: str) -> None:
        self.hafed_digest = module_digest(hafed)
        self.device_type = str(device_type)
        self.dim: int | None = getattr(getattr(hafed, "config", None), "in_dim", None)
        self.folder = precompute_root() / f"slides-{self.hafed_digest[:24]}-{self.device_type}"

    def path(self, slide_digest: str) -> Path:
        return self.folder / f"{sha256_hex(str(FORMAT_VERSION), self.hafed_digest, slide_digest)}.safetensors"

    def shape(self, slide_digest: str) -> tuple[int, int] | None:
        """``(N, d)`` of a cached record whose arrays have the expected names, dtypes and shapes, else None."""
        found = _header(self.path(slide_digest))
        if found is None or set(found[1]) != set(RECORD):
            return None
        header = found[1]
        z_shape = header["z"]["shape"]
        if len(z_shape) != 2:
            return None
        n, d = int(z_shape[0]), int(self.dim if self.dim is not None else z_shape[1])
        for name, (dtype, trailing) in RECORD.items():
            expected = (n, *(d if t is None else t for t in trailing))
            if (
                tuple(header[name]["shape"]) != expected
                or _SAFETENSORS_DTYPES[header[name]["dtype"]] != dtype
            ):
                return None
        return n, d

    def write(self, slide_digest: str, arrays: dict[str, np.ndarray]) -> None:
        """Publish one slide's record atomically (``arrays`` holds every name of :data:`RECORD`)."""
        data = {k: np.ascontiguousarray(arrays[k], dtype=RECORD[k][0]) for k in RECORD}
        publish_file(self.path(slide_digest), lambda tmp: save_file(data, str(tmp)))

    def read_into(self, slide_digest: str, out: dict[str, np.ndarray]) -> bool:
        """Read a record into the C-contiguous arrays ``out`` (its rows of the flat arrays); False when
        the file is missing or does not match them."""
        found = _header(path := self.path(slide_digest))
        if found is None or set(found[1]) != set(out):
            return False
        base, header = found
        try:
            with open(path, "rb") as fh:
                for name, dest in out.items():
                    entry = header[name]
                    if (
                        tuple(entry["shape"]) != dest.shape
                        or _SAFETENSORS_DTYPES[entry["dtype"]] != dest.dtype
                    ):
                        return False
                    fh.seek(base + int(entry["data_offsets"][0]))
                    if fh.readinto(memoryview(dest).cast("B")) != dest.nbytes:
                        return False
        except OSError:
            return False
        return True

    @contextlib.contextmanager
    def building(self, what: str) -> Iterator[None]:
        """Hold the folder's build lock and remove the temp files of killed builders."""
        with build_lock(self.folder, what):
            remove_stale_temps(self.folder)
            yield

    def split_key(self, slide_digests: list[str]) -> str:
        """Digest of a split's records: this HAFED, this device type and the slides in order."""
        return sha256_hex("split", str(FORMAT_VERSION), self.hafed_digest, self.device_type, *slide_digests)


def cached_array(
    kind: str, key: str, shape: tuple[int, ...], compute: Callable[[], np.ndarray], what: str
) -> np.ndarray:
    """The float32 array ``kind/<key>`` of the cache, computed by ``compute()`` (``shape``) and
    published on first use; concurrent builders compute it once (the others wait and read it)."""
    path = precompute_root() / kind / f"{sha256_hex(str(FORMAT_VERSION), key)}.safetensors"
    arrays = _read_arrays(path, {kind: shape})
    if arrays is not None:
        return arrays[kind]
    with build_lock(path, what):
        arrays = _read_arrays(path, {kind: shape})  # published while we waited
        if arrays is not None:
            return arrays[kind]
        remove_stale_temps(path.parent, path.name)
        value = np.asarray(compute(), dtype=np.float32)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{kind}: computed shape {value.shape}, expected {shape}")
        _write_arrays(path, {kind: value})
        return value
