"""Open a whole-slide image: OpenSlide first, tiffslide as the fallback reader.

:class:`SlideReader` holds the *path* and opens the file lazily on first use. It pickles as its path
(the handle is dropped and reopened in the new process), so environments running in subprocess
vectors can carry one. Every read returns ``uint8 (h, w, 3)`` RGB numpy arrays, with transparent
pixels composited on white.

Checks done when a slide is opened (each failure is one :class:`~wsigym.errors.DataError` naming the
file): missing, empty, not a format either reader knows (text renamed ``.svs``, PNG, ...), and
truncated or corrupt pixel data (a probe reads the bottom-right tile of level 0 and the whole lowest
level, capped to 4096 px a side). OpenSlide never gets to return a PIL ``ImageSlide`` for an untiled
TIFF: such files go to tiffslide.

Geometry (see :mod:`wsigym.slides.magnification`): the base magnification ``mag0`` comes from
``mpp`` (``10 / mpp``), else from the objective-power property; an explicit ``mpp=`` overrides both.
A slide with neither raises a DataError saying to pass ``mpp=``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsigym.errors import DataError
from wsigym.slides.magnification import (
    children_per_side,
    level_for_downsample,
    magnification_from_mpp,
    patch_size_level0,
)

BACKENDS = ("auto", "openslide", "tiffslide")
_PROBE_MAX = 1024


def _float_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


class SlideReader:
    """A lazily opened slide.

    Args:
        path: slide file.
        mpp: microns per level-0 pixel; overrides the file's value (needed when the file has none).
        backend: ``"auto"`` (OpenSlide, else tiffslide), ``"openslide"`` or ``"tiffslide"``.

    Attributes after opening: ``backend`` (the reader used), ``vendor``, ``level_dimensions``
    ``((w, h), ...)``, ``level_downsamples``, ``dimensions`` (level 0).
    """

    def __init__(self, path: str | os.PathLike[str], *, mpp: float | None = None, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if mpp is not None and _float_or_none(mpp) is None:
            raise ValueError(f"mpp= must be a positive number of microns per pixel, got {mpp!r}")
        self.path = Path(path)
        self.mpp_override = None if mpp is None else float(mpp)
        self.requested_backend = backend
        self._handle: Any = None
        self.backend: str | None = None

    # ----------------------------------------------------------------- pickling: path only
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"SlideReader({str(self.path)!r}, backend={self.backend or self.requested_backend!r})"

    def __enter__(self) -> SlideReader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        """Slide id: the file name without its extension."""
        return self.path.stem

    # ----------------------------------------------------------------- opening
    def open(self) -> SlideReader:
        """Open (once) and probe the file; raises DataError on anything unreadable."""
        if self._handle is not None:
            return self
        p = self.path
        if not p.exists():
            raise DataError(p, "no such file")
        if not p.is_file():
            raise DataError(p, "is not a file (expected a slide file such as .svs/.tif/.ndpi)")
        if p.stat().st_size == 0:
            raise DataError(p, "file is empty (0 bytes), not a slide")
        errors: list[str] = []
        if self.requested_backend in ("auto", "openslide"):
            handle = self._open_openslide(errors)
            if handle is not None:
                self._handle, self.backend = handle, "openslide"
        if self._handle is None and self.requested_backend in ("auto", "tiffslide"):
            handle = self._open_tiffslide(errors)
            if handle is not None:
                self._handle, self.backend = handle, "tiffslide"
        if self._handle is None:
            raise DataError(p, "not a readable slide (" + "; ".join(errors) + ")")
        try:
            self._probe()
        except DataError:
            self.close()
            raise
        return self

    def _open_openslide(self, errors: list[str]) -> Any:
        try:
            import openslide
        except ImportError as e:  # pragma: no cover - depends on the install
            errors.append(f"openslide is not installed: {e}")
            return None
        try:
            fmt = openslide.OpenSlide.detect_format(str(self.path))
        except Exception as e:
            errors.append(f"OpenSlide: {e}")
            return None
        if fmt is None:
            # OpenSlide's open_slide() would hand back a PIL ImageSlide here (untiled TIFF, PNG, ...):
            # never use that, let tiffslide try.
            errors.append("OpenSlide does not recognise the format")
            return None
        try:
            return openslide.OpenSlide(str(self.path))
        except Exception as e:
            errors.append(f"OpenSlide ({fmt}): {e}")
            return None

    def _open_tiffslide(self, errors: list[str]) -> Any:
        try:
            import tiffslide
        except ImportError as e:  # pragma: no cover
            errors.append(f"tiffslide is not installed: {e}")
            return None
        try:
            handle = tiffslide.TiffSlide(str(self.path))
            _ = handle.level_dimensions
            return handle
        except Exception as e:
            errors.append(f"tiffslide: {type(e).__name__}: {e}")
            return None

    def _probe(self) -> None:
        dims = self.level_dimensions
        if not dims or any(w <= 0 or h <= 0 for w, h in dims):
            raise DataError(self.path, f"slide has no pixels (level dimensions {dims})")
        w0, h0 = dims[0]
        t = min(256, w0, h0)
        try:
            self._raw_read((w0 - t, h0 - t), 0, (t, t))
            last = len(dims) - 1
            wl, hl = dims[last]
            ds = self.level_downsamples[last]
            pw, ph = min(wl, _PROBE_MAX), min(hl, _PROBE_MAX)
            self._raw_read((int((wl - pw) * ds), int((hl - ph) * ds)), last, (pw, ph))
        except Exception as e:
            raise DataError(
                self.path,
                f"not a readable slide: pixel data cannot be decoded (truncated or corrupt file?): "
                f"{type(e).__name__}: {e}",
            ) from e

    def close(self) -> None:
        """Close the file handle (a later read reopens it)."""
        if self._handle is not None:
            try:
                self._handle.close()
            finally:
                self._handle = None

    @property
    def handle(self) -> Any:
        """The underlying ``openslide.OpenSlide`` or ``tiffslide.TiffSlide`` (opens on demand)."""
        if self._handle is None:
            self.open()
        return self._handle

    # ----------------------------------------------------------------- properties
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self.handle.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self.handle.level_downsamples)

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.handle.properties)

    def _prop(self, key: str) -> Any:
        prefix = "openslide." if self.backend == "openslide" else "tiffslide."
        return self.handle.properties.get(prefix + key)

    @property
    def vendor(self) -> str | None:
        v = self._prop("vendor")
        return None if v is None else str(v)

    @property
    def file_mpp(self) -> float | None:
        """Microns per level-0 pixel stored in the file (mean of x and y), or None."""
        x, y = _float_or_none(self._prop("mpp-x")), _float_or_none(self._prop("mpp-y"))
        if x is None:
            return None
        return x if y is None else (x + y) / 2

    @property
    def objective_power(self) -> float | None:
        """The file's objective-power property (e.g. 20), or None."""
        return _float_or_none(self._prop("objective-power"))

    @property
    def mpp(self) -> float | None:
        """The ``mpp=`` override, else the file's value, else None."""
        return self.mpp_override if self.mpp_override is not None else self.file_mpp

    @property
    def base_magnification(self) -> float:
        """Objective magnification of level 0: ``10 / mpp`` (snapped), else the objective power.

        Raises:
            DataError: when the file has neither and no ``mpp=`` was given.
        """
        mpp = self.mpp
        if mpp is not None:
            mag = magnification_from_mpp(mpp)
            power = self.objective_power
            if self.mpp_override is None and power is not None and abs(power - mag) / power > 0.25:
                warnings.warn(
                    f"{self.path}: objective power {power:g}x disagrees with mpp {mpp:g} "
                    f"(= {mag:g}x); using the mpp",
                    stacklevel=2,
                )
            return mag
        power = self.objective_power
        if power is not None:
            return power
        raise DataError(
            self.path,
            "the slide has no microns-per-pixel (mpp) or objective-power metadata, so magnifications "
            "cannot be placed; pass mpp= (e.g. mpp=0.5 for a 20x scan, 0.25 for 40x)",
        )

    def info(self) -> dict[str, Any]:
        """A JSON-friendly summary (magnification fields are None when unknown)."""
        try:
            mag: float | None = self.base_magnification
        except DataError:
            mag = None
        return {
            "path": str(self.path),
            "name": self.name,
            "backend": self.backend if self._handle is not None else self.open().backend,
            "vendor": self.vendor,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp,
            "file_mpp": self.file_mpp,
            "objective_power": self.objective_power,
            "base_magnification": mag,
        }

    # ----------------------------------------------------------------- reading
    def _raw_read(self, xy0: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        h = self.handle
        if self.backend == "tiffslide":
            arr = np.asarray(h.read_region(xy0, level, size, as_array=True))
        else:
            arr = np.asarray(h.read_region(xy0, level, size))
        return _to_rgb(arr)

    def read_region(self, xy0: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size = (w, h)`` pixels of ``level`` whose top-left is ``xy0`` in level-0 px.

        Returns:
            ``uint8 (h, w, 3)`` RGB.

        Raises:
            ValueError: for a level that does not exist or a region that leaves the slide
                (OpenSlide itself would silently return transparent pixels).
        """
        dims = self.level_dimensions
        if not (0 <= int(level) < len(dims)):
            raise ValueError(f"{self.path}: level {level} does not exist (the slide has {len(dims)} levels)")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.path}: region size must be positive, got {size}")
        x, y = int(xy0[0]), int(xy0[1])
        ds = self.level_downsamples[level]
        w0, h0 = dims[0]
        # one level pixel of slack for rounding of non-integer downsamples
        if x < 0 or y < 0 or x + (w - 1) * ds > w0 or y + (h - 1) * ds > h0:
            raise ValueError(
                f"{self.path}: region at level-0 ({x}, {y}) of {w}x{h} px at level {level} "
                f"(downsample {ds:g}) leaves the slide ({w0}x{h0} level-0 px)"
            )
        return self._raw_read((x, y), int(level), (w, h))

    def read_level0_box(self, xy0: tuple[int, int], size_level0: int, out_size: int) -> np.ndarray:
        """Read the square of ``size_level0`` level-0 px at ``xy0`` and resample it to ``out_size`` px.

        Reads from the level with the largest downsample not above ``size_level0 / out_size``, then
        resizes (PIL Lanczos) when the sizes differ. Returns ``uint8 (out_size, out_size, 3)``.
        """
        need = size_level0 / out_size
        level = level_for_downsample(self.level_downsamples, need)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        x, y = int(xy0[0]), int(xy0[1])
        side = max(1, round(size_level0 / ds))
        # clamp the rounding overrun of non-integer downsamples to the level
        sw = min(side, lw - int(x / ds)) if x + size_level0 <= self.dimensions[0] else side
        sh = min(side, lh - int(y / ds)) if y + size_level0 <= self.dimensions[1] else side
        region = self.read_region((x, y), level, (max(1, sw), max(1, sh)))
        if region.shape[:2] != (out_size, out_size):
            region = np.asarray(
                Image.fromarray(region).resize((out_size, out_size), Image.Resampling.LANCZOS), dtype=np.uint8
            )
        return region

    def read_downsampled(self, downsample: float, chunk: int = 2048) -> np.ndarray:
        """The whole slide at ``downsample`` (level-0 px per output px), read chunk by chunk.

        Returns ``uint8 (ceil(H0/downsample), ceil(W0/downsample), 3)``.
        """
        w0, h0 = self.dimensions
        out_w, out_h = max(1, math.ceil(w0 / downsample)), max(1, math.ceil(h0 / downsample))
        level = level_for_downsample(self.level_downsamples, downsample)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        if abs(ds - downsample) < 1e-6 and (lw, lh) == (out_w, out_h) and lw * lh <= 8192 * 8192:
            return self._raw_read((0, 0), level, (lw, lh))
        out = np.full((out_h, out_w, 3), 255, dtype=np.uint8)
        f = downsample / ds  # level px per output px (>= 1)
        co = max(1, int(chunk / f))  # output px per chunk
        for oy in range(0, out_h, co):
            for ox in range(0, out_w, co):
                lx, ly = int(ox * f), int(oy * f)
                rw, rh = min(math.ceil(co * f), lw - lx), min(math.ceil(co * f), lh - ly)
                if rw <= 0 or rh <= 0:
                    continue
                tile = self._raw_read((int(lx * ds), int(ly * ds)), level, (rw, rh))
                tw = max(1, min(out_w - ox, co, math.ceil(rw / f)))
                th = max(1, min(out_h - oy, co, math.ceil(rh / f)))
                small = Image.fromarray(tile).resize((tw, th), Image.Resampling.BOX)
                out[oy : oy + th, ox : ox + tw] = np.asarray(small)
        return out


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """RGBA/RGB/grey -> ``uint8 (h, w, 3)``; transparent pixels become white."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr.astype(np.uint8, copy=False)
    if arr.shape[2] == 4:
        alpha = arr[..., 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(arr[..., :3])
        a = arr[..., 3:4].astype(np.float32) / 255.0
        rgb = arr[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def open_slide(path: str | os.PathLike[str] | SlideReader, *, mpp: float | None = None) -> SlideReader:
    """Open and probe a slide (OpenSlide, else tiffslide); a reader passes through (``mpp`` applied)."""
    if isinstance(path, SlideReader):
        if mpp is not None:
            path.mpp_override = float(mpp)
        return path.open()
    return SlideReader(path, mpp=mpp).open()


def read_patch(
    slide: SlideReader | str | os.PathLike[str],
    coord_level0: tuple[int, int],
    mag: float,
    size: int = 256,
    *,
    mpp: float | None = None,
) -> np.ndarray:
    """The ``size`` px patch at magnification ``mag`` whose top-left is ``coord_level0``.

    It covers ``size * mag0 / mag`` level-0 px. Returns ``uint8 (size, size, 3)``.
    """
    s = open_slide(slide, mpp=mpp)
    mag0 = s.base_magnification
    if mag > mag0 * 1.01:
        raise ValueError(
            f"{s.path}: target magnification {mag:g}x is above the slide's base magnification {mag0:g}x"
        )
    return s.read_level0_box(coord_level0, patch_size_level0(size, mag0, mag), size)


def read_children(
    slide: SlideReader | str | os.PathLike[str],
    parent_coord_level0: tuple[int, int],
    lr_mag: float,
    hr_mag: float,
    patch_size: int = 256,
    *,
    mpp: float | None = None,
) -> np.ndarray:
    """The ``k = (hr/lr)^2`` high-res children of one low-res patch, row-major.

    Child ``j`` sits at row ``j // s``, column ``j % s`` (``s = hr / lr``), i.e. at level-0
    ``parent + (col, row) * child_size_level0``. The parent is read once at ``hr_mag`` and cut.

    Returns:
        ``uint8 (k, patch_size, patch_size, 3)``.
    """
    s_ = open_slide(slide, mpp=mpp)
    s = children_per_side(lr_mag, hr_mag)
    mag0 = s_.base_magnification
    if hr_mag > mag0 * 1.01:
        raise ValueError(
            f"{s_.path}: target magnification {hr_mag:g}x is above the slide's base magnification {mag0:g}x"
        )
    ps0 = patch_size_level0(patch_size, mag0, lr_mag)
    big = s_.read_level0_box(parent_coord_level0, ps0, s * patch_size)
    tiles = big.reshape(s, patch_size, s, patch_size, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(tiles.reshape(s * s, patch_size, patch_size, 3))
