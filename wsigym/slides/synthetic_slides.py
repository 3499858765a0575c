"""Synthetic pyramidal Aperio-style TIFFs with known tumour-like regions.

:func:`write_aperio_tiff` writes an H&E-like image: white background, pink tissue blobs with sparse
small nuclei, and dense purple "tumour" ellipses (crowded, larger nuclei) inscribed in the given
boxes. The file is a tiled JPEG pyramid in the main IFD chain whose first description starts with
``Aperio Image Library`` and carries ``AppMag`` and ``MPP`` (tifffile ``metadata=None``), so
OpenSlide opens it as vendor ``aperio`` with ``openslide.mpp-x`` and ``openslide.objective-power``,
and tiffslide reads it too. Levels shrink by 4 (like Aperio scans): 8192 -> 2048 -> 512.

The ground truth is the list of boxes; :func:`tumour_fraction` gives the exact-enough tumour area
fraction of any level-0 square (ellipses rasterised at 1/8 of level 0), which the live environment
tests use as ``tumour_fraction`` / ``hr_tumour_fraction``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from wsigym.io import atomic_write

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) level-0 px, x1/y1 exclusive

_BACKGROUND = np.array([244, 242, 246], dtype=np.float32)
_STROMA = np.array([232, 160, 196], dtype=np.float32)
_TUMOUR = np.array([150, 90, 175], dtype=np.float32)
_NUCLEUS = np.array([70, 30, 110], dtype=np.float32)
_BASE_DS = 4  # the colour fields are built at 1/4 of level 0 and repeated


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`write_aperio_tiff` wrote.

    Attributes:
        path: the TIFF file.
        width, height: level-0 size in px.
        mpp: microns per level-0 pixel; ``magnification = 10 / mpp``.
        tumour_regions: boxes ``(x0, y0, x1, y1)`` in level-0 px; the tumour is the ellipse inscribed in each.
        level_dimensions: ``((w, h), ...)`` per level.
    """

    path: Path
    width: int
    height: int
    mpp: float
    tumour_regions: tuple[Box, ...]
    level_dimensions: tuple[tuple[int, int], ...]

    @property
    def magnification(self) -> float:
        return 10.0 / self.mpp


def ellipse_mask(regions: Sequence[Box], width: int, height: int, downsample: float) -> np.ndarray:
    """Bool ``(ceil(height/ds), ceil(width/ds))``: True inside any ellipse inscribed in a box.

    Pixel ``(i, j)`` stands for the level-0 point ``((j + 0.5) * ds, (i + 0.5) * ds)``.
    """
    h, w = int(np.ceil(height / downsample)), int(np.ceil(width / downsample))
    ys = (np.arange(h, dtype=np.float64) + 0.5) * downsample
    xs = (np.arange(w, dtype=np.float64) + 0.5) * downsample
    out = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in regions:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max(1e-9, (x1 - x0) / 2), max(1e-9, (y1 - y0) / 2)
        out |= ((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2 <= 1.0
    return out


def tumour_fraction(
    regions: Sequence[Box],
    coords: np.ndarray,
    size_level0: int,
    width: int,
    height: int,
    *,
    downsample: float = 8.0,
) -> np.ndarray:
    """Tumour area fraction of level-0 squares ``[x, x+size) x [y, y+size)``.

    Args:
        coords: ``(..., 2)`` int level-0 top-left corners.
    Returns:
        ``float32 (...)`` in [0, 1].
    """
    mask = ellipse_mask(regions, width, height, downsample).astype(np.float64)
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0 = np.clip(np.round(c[:, 0] / downsample), 0, mask.shape[1]).astype(int)
    y0 = np.clip(np.round(c[:, 1] / downsample), 0, mask.shape[0]).astype(int)
    x1 = np.clip(np.round((c[:, 0] + size_level0) / downsample), 0, mask.shape[1]).astype(int)
    y1 = np.clip(np.round((c[:, 1] + size_level0) / downsample), 0, mask.shape[0]).astype(int)
    area = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    full = np.maximum(1.0, (size_level0 / downsample) ** 2)
    return np.clip(area / full, 0.0, 1.0).astype(np.float32).reshape(np.shape(coords)[:-1])


def default_tumour_regions(width: int, height: int) -> tuple[Box, ...]:
    """Two tumour ellipses: a large one and a small one, both inside the default tissue."""
    return (
        (int(0.22 * width), int(0.25 * height), int(0.45 * width), int(0.48 * height)),
        (int(0.60 * width), int(0.58 * height), int(0.68 * width), int(0.66 * height)),
    )


def _base_image(
    width: int, height: int, regions: Sequence[Box], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """RGB float32 colour field at 1/4 of level 0 and its tissue mask."""
    h, w = int(np.ceil(height / _BASE_DS)), int(np.ceil(width / _BASE_DS))
    # tissue: smoothed noise thresholded into a few blobs, kept away from the border
    coarse = ndimage.gaussian_filter(rng.standard_normal((max(8, h // 16), max(8, w // 16))), sigma=3.0)
    coarse = ndimage.zoom(coarse, (h / coarse.shape[0], w / coarse.shape[1]), order=1)[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w]
    centre = 1.0 - (((xx - w / 2) / (0.42 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2)
    tissue = (coarse / (coarse.std() + 1e-9) * 0.35 + centre) > 0.15
    tumour = ellipse_mask(regions, width, height, _BASE_DS)[:h, :w]
    tissue |= tumour
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = _BACKGROUND
    img[tissue] = _STROMA
    img[tumour] = _TUMOUR
    # nuclei: sparse small ones in stroma, dense large ones in tumour
    noise = rng.random((h, w))
    nuclei = (tissue & ~tumour & (noise < 0.02)) | (tumour & (noise < 0.18))
    nuclei = ndimage.binary_dilation(nuclei, iterations=1) & tissue
    img[nuclei] = _NUCLEUS
    img = ndimage.uniform_filter(img, size=(2, 2, 1))
    return img, tissue


def _level0_tiles(
    base: np.ndarray, width: int, height: int, tile: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Level-0 tiles: the 1/4 colour field repeated 4x, plus per-pixel noise for texture."""
    b = tile // _BASE_DS
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            part = base[y // _BASE_DS : y // _BASE_DS + b, x // _BASE_DS : x // _BASE_DS + b]
            up = np.repeat(np.repeat(part, _BASE_DS, axis=0), _BASE_DS, axis=1).astype(np.int16)
            up += rng.integers(-8, 9, size=(*up.shape[:2], 1), dtype=np.int16)
            t = np.full((tile, tile, 3), 255, dtype=np.uint8)
            t[: up.shape[0], : up.shape[1]] = np.clip(up, 0, 255).astype(np.uint8)
            yield t


def _tiles(level_img: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    h, w = level_img.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, dtype=np.uint8)
            part = level_img[y : y + tile, x : x + tile]
            t[: part.shape[0], : part.shape[1]] = part
            yield t


def write_aperio_tiff(
    path: str | os.PathLike[str],
    *,
    width: int = 8192,
    height: int = 8192,
    mpp: float = 0.25,
    levels: int = 3,
    tumour_regions: Sequence[Box] | None = None,
    seed: int = 0,
    tile: int = 256,
    quality: int = 90,
) -> SyntheticSlide:
    """Write a synthetic H&E-like Aperio SVS-style pyramidal TIFF.

    Args:
        path: output file (written to a temp file in the same folder, then renamed).
        width, height: level-0 size in px (multiples of ``tile`` recommended).
        mpp: microns per level-0 px (0.25 = 40x); written as ``MPP`` and ``AppMag = round(10 / mpp)``.
        levels: pyramid levels, each 4x smaller than the previous.
        tumour_regions: boxes ``(x0, y0, x1, y1)`` (level-0 px) holding the tumour ellipses;
            default :func:`default_tumour_regions`.
        seed: seeds all texture.
        tile: TIFF tile side.
        quality: JPEG quality.

    Returns:
        :class:`SyntheticSlide` with the ground-truth regions.
    """
    import tifffile

    path = Path(path)
    regions = tuple(
        tuple(int(v) for v in r)
        for r in (default_tumour_regions(width, height) if tumour_regions is None else tumour_regions)
    )
    for r in regions:
        if not (0 <= r[0] < r[2] <= width and 0 <= r[1] < r[3] <= height):
            raise ValueError(
                f"tumour region {r} must satisfy 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}"
            )
    rng = np.random.default_rng(seed)
    base_f, _ = _base_image(width, height, regions, rng)
    base = np.clip(base_f + 0.5, 0, 255).astype(np.uint8)
    mag = 10.0 / mpp
    dims = [(width, height)]
    header = (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
        f"JPEG/RGB Q={quality}|AppMag = {mag:g}|MPP = {mpp:g}|Filename = {path.stem}|wsigym = synthetic"
    )

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
            for lv in range(levels):
                if lv == 0:
                    h, w, desc = height, width, header
                    data = _level0_tiles(base, width, height, tile, rng)
                else:
                    img = base
                    if lv > 1:
                        f = 4 ** (lv - 1)
                        img = np.asarray(
                            Image.fromarray(base).resize(
                                (max(1, base.shape[1] // f), max(1, base.shape[0] // f)), Image.Resampling.BOX
                            )
                        )
                    h, w = img.shape[:2]
                    dims.append((w, h))
                    desc = (
                        f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> {w}x{h} - "
                        f"|AppMag = {mag:g}|MPP = {mpp:g}"
                    )
                    data = _tiles(img, tile)
                tw.write(
                    data,
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    subfiletype=0 if lv == 0 else 1,
                    description=desc,
                    metadata=None,
                )
                if lv == 0:
                    # a stripped thumbnail as the second directory, as Aperio writes it
                    # (OpenSlide: associated image "thumbnail"; tifffile's svs series expects it)
                    f = max(1, int(np.ceil(max(base.shape[:2]) / 256)))
                    thumb = np.asarray(
                        Image.fromarray(base).resize(
                            (max(1, base.shape[1] // f), max(1, base.shape[0] // f)), Image.Resampling.BOX
                        )
                    )
                    tw.write(
                        thumb,
                        photometric="rgb",
                        compression="jpeg",
                        compressionargs={"level": quality},
                        rowsperstrip=16,
                        description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> "
                        f"{thumb.shape[1]}x{thumb.shape[0]} - |AppMag = {mag:g}|MPP = {mpp:g}",
                        metadata=None,
                    )

    atomic_write(path, write)
    return SyntheticSlide(path, width, height, float(mpp), regions, tuple(dims))
