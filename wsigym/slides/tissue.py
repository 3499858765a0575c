"""Tissue segmentation on a downsampled slide, CLAM-style, with scipy.ndimage.

Pipeline on an RGB image at ``downsample`` level-0 px per pixel:

1. saturation channel ``S`` of HSV (0..255); median blur of width ``mthresh`` (CLAM: 7);
2. tissue = ``S > sthresh`` (CLAM: 8) or, with ``method="otsu"``, ``S > t*`` where ``t*`` maximises the
   between-class variance ``w0 w1 (mu0 - mu1)^2`` of the blurred saturation histogram;
3. morphological closing with a ``close x close`` square (CLAM: 4);
4. connected pieces (8-connected) with fewer than ``a_t`` reference-patch areas of tissue are dropped,
   holes (4-connected background enclosed by tissue) smaller than ``a_h`` reference-patch areas are filled.
   A reference patch is ``ref_patch_size^2`` level-0 px (CLAM: 512). CLAM's default ``a_t = 100``
   drops anything under 100 such areas; the default here is 1, so small test slides keep their tissue.

The result is a :class:`TissueMask`: a bool mask (True = tissue) plus its downsample, with
:meth:`TissueMask.fraction` giving the tissue fraction of level-0 squares via an integral image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from wsigym.slides.reader import SlideReader, open_slide

METHODS = ("saturation", "otsu")


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask.

    Attributes:
        mask: bool ``(h, w)``, True on tissue; pixel ``(i, j)`` covers level-0
            ``[j * ds, (j + 1) * ds) x [i * ds, (i + 1) * ds)``.
        downsample: level-0 px per mask px (``ds``).
        threshold: the saturation threshold used.
    """

    mask: np.ndarray
    downsample: float
    threshold: float

    @property
    def tissue_fraction_total(self) -> float:
        return float(self.mask.mean())

    def fraction(self, coords: np.ndarray, size_level0: float) -> np.ndarray:
        """Tissue fraction of the level-0 squares ``[x, x + size) x [y, y + size)``.

        Args:
            coords: ``(..., 2)`` level-0 top-left corners.
        Returns:
            ``float32 (...)``; parts outside the mask count as background.
        """
        c = np.asarray(coords, dtype=np.float64)
        flat = c.reshape(-1, 2)
        h, w = self.mask.shape
        integral = np.zeros((h + 1, w + 1), dtype=np.float64)
        integral[1:, 1:] = self.mask.cumsum(0, dtype=np.float64).cumsum(1)
        ds = self.downsample

        side = max(1, round(size_level0 / ds))
        x0 = np.clip(np.floor(flat[:, 0] / ds), 0, w).astype(np.int64)
        y0 = np.clip(np.floor(flat[:, 1] / ds), 0, h).astype(np.int64)
        x1 = np.clip(np.floor(flat[:, 0] / ds) + side, 0, w).astype(np.int64)
        y1 = np.clip(np.floor(flat[:, 1] / ds) + side, 0, h).astype(np.int64)
        area = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        full = float(side * side)
        return np.clip(area / full, 0.0, 1.0).astype(np.float32).reshape(c.shape[:-1])

    def boundary(self) -> np.ndarray:
        """Bool ``(h, w)``: tissue pixels with a background 4-neighbour (the contours)."""
        m = self.mask
        return m & ~ndimage.binary_erosion(m, border_value=0)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values: the ``t`` maximising ``w0(t) w1(t) (mu0(t) - mu1(t))^2``.

    Pixels ``> t`` form the upper class; the middle of a plateau of maxima is taken. Returns 0 for a
    constant image.
    """
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    p = hist / total
    omega = np.cumsum(p)  # w0(t): P(v <= t)
    mu = np.cumsum(p * np.arange(256))
    mu_t = mu[-1]
    denom = omega * (1.0 - omega)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_b = np.where(denom > 0, (mu_t * omega - mu) ** 2 / denom, 0.0)
    if not np.any(sigma_b > 0):
        return 0.0
    # empty bins between the modes give a plateau of equal maxima: take its middle
    first = int(np.argmax(sigma_b))
    best = sigma_b[first]
    last = first
    while last + 1 < 256 and sigma_b[last + 1] >= best * (1 - 1e-12):
        last += 1
    return float((first + last) // 2)


def default_downsample(dimensions: tuple[int, int], *, max_side: int = 1024, cap: float = 64.0) -> float:
    """Segmentation downsample: ``min(cap, max(1, long_side / max_side))`` (CLAM works near 64)."""
    return float(min(cap, max(1.0, max(dimensions) / max_side)))


def segment_image(
    rgb: np.ndarray,
    downsample: float,
    *,
    method: str = "saturation",
    sthresh: float = 8,
    mthresh: int = 7,
    close: int = 4,
    a_t: float = 1.0,
    a_h: float = 16.0,
    ref_patch_size: int = 512,
) -> TissueMask:
    """Segment tissue in a ``uint8 (h, w, 3)`` image taken at ``downsample`` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {rgb.shape}")
    sat = np.asarray(Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("HSV"))[..., 1]
    if mthresh and mthresh > 1:
        sat = ndimage.median_filter(sat, size=int(mthresh), mode="nearest")
    threshold = otsu_threshold(sat) if method == "otsu" else float(sthresh)
    tissue = sat > threshold
    if close and close > 1:
        pad = int(close)
        padded = np.pad(tissue, pad, mode="constant")
        tissue = ndimage.binary_closing(padded, structure=np.ones((close, close), dtype=bool))[
            pad:-pad, pad:-pad
        ]
    ref_area_px = ref_patch_size**2 / downsample**2  # one reference patch in mask pixels
    if a_t > 0 and tissue.any():
        labels, n = ndimage.label(tissue, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= a_t * ref_area_px
        keep[0] = False
        tissue = keep[labels]
    if a_h > 0 and tissue.any():
        holes = ndimage.binary_fill_holes(tissue) & ~tissue
        labels, n = ndimage.label(holes)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        small = sizes < a_h * ref_area_px
        small[0] = False
        tissue = tissue | small[labels]
    return TissueMask(mask=tissue.astype(bool), downsample=float(downsample), threshold=float(threshold))


def segment_tissue(
    slide: SlideReader | str,
    *,
    downsample: float | None = None,
    method: str = "saturation",
    sthresh: float = 8,
    mthresh: int = 7,
    close: int = 4,
    a_t: float = 1.0,
    a_h: float = 16.0,
    ref_patch_size: int = 512,
) -> TissueMask:
    """Segment a slide's tissue at ``downsample`` (default :func:`default_downsample`).

    The image is read with :meth:`SlideReader.read_downsampled` (best level, then box-resampled);
    needs no magnification metadata.
    """
    s = open_slide(slide)
    ds = default_downsample(s.dimensions) if downsample is None else float(downsample)
    if not (math.isfinite(ds) and ds >= 1):
        raise ValueError(f"downsample must be >= 1, got {downsample!r}")
    rgb = s.read_downsampled(ds)
    return segment_image(
        rgb,
        ds,
        method=method,
        sthresh=sthresh,
        mthresh=mthresh,
        close=close,
        a_t=a_t,
        a_h=a_h,
        ref_patch_size=ref_patch_size,
    )
