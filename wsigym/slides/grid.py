"""The low-res patch grid over tissue and the high-res children of each kept patch.

Geometry (level-0 px, ``mag0`` = base magnification, ``P`` = patch size in px):

- a low-res patch at ``lr_mag`` covers ``S = round(P * mag0 / lr_mag)`` level-0 px; the grid starts at
  ``(0, 0)`` with step ``S`` (no overlap) and holds only patches that lie fully inside the slide;
- it is kept when its tissue fraction is ``>= min_tissue``;
- each kept patch has ``k = s^2`` children, ``s = hr_mag / lr_mag``, each ``S / s`` level-0 px (``P`` px at
  ``hr_mag``); child ``j`` sits at row ``j // s``, column ``j % s``: ``parent + (j % s, j // s) * S / s``;
- a child is valid (``hr_mask``) when its own tissue fraction is ``>= min_tissue``. A kept parent always
  has a valid child: the children's fractions average to the parent's, so the largest is ``>= min_tissue``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsigym.slides.magnification import children_per_side, patch_size_level0
from wsigym.slides.reader import SlideReader, open_slide
from wsigym.slides.tissue import TissueMask


def grid_coords(dimensions: tuple[int, int], size_level0: int) -> np.ndarray:
    """All full ``size_level0`` squares of a ``(W, H)`` slide, row-major: ``int64 (nx * ny, 2)``."""
    w, h = dimensions
    nx, ny = w // size_level0, h // size_level0
    ys, xs = np.meshgrid(np.arange(ny, dtype=np.int64), np.arange(nx, dtype=np.int64), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1) * int(size_level0)


def child_coords(coords: np.ndarray, size_level0: int, per_side: int) -> np.ndarray:
    """Children of low-res patches: ``(N, 2)`` -> ``int64 (N, s*s, 2)`` (row-major within a parent)."""
    if size_level0 % per_side:
        raise ValueError(
            f"a low-res patch of {size_level0} level-0 px cannot be cut into {per_side} x {per_side} children"
        )
    c = size_level0 // per_side
    j = np.arange(per_side * per_side)
    offs = np.stack([j % per_side, j // per_side], axis=1).astype(np.int64) * c
    return np.asarray(coords, dtype=np.int64)[:, None, :] + offs[None, :, :]


@dataclass(frozen=True)
class PatchPlan:
    """Where to cut a slide's patches.

    Attributes:
        coords: ``int64 (N, 2)`` kept low-res patches (level-0 top-left).
        tissue_fraction: ``float32 (N,)``.
        hr_coords: ``int64 (N, k, 2)`` their children.
        hr_tissue_fraction: ``float32 (N, k)``.
        hr_mask: ``bool (N, k)``: child on tissue.
        patch_size: px at either magnification.
        patch_size_level0: low-res patch side in level-0 px.
        hr_patch_size_level0: child side in level-0 px.
        lr_magnification, hr_magnification, base_magnification: objective magnifications.
        dimensions: level-0 ``(W, H)``.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    hr_coords: np.ndarray
    hr_tissue_fraction: np.ndarray
    hr_mask: np.ndarray
    patch_size: int
    patch_size_level0: int
    hr_patch_size_level0: int
    lr_magnification: float
    hr_magnification: float
    base_magnification: float
    dimensions: tuple[int, int]

    @property
    def n(self) -> int:
        return int(self.coords.shape[0])

    @property
    def k(self) -> int:
        return int(self.hr_coords.shape[1])

    @property
    def children_per_side(self) -> int:
        return round(self.patch_size_level0 / self.hr_patch_size_level0)


def plan_patches(
    slide: SlideReader | str,
    tissue: TissueMask,
    *,
    lr_mag: float = 5.0,
    hr_mag: float = 20.0,
    patch_size: int = 256,
    min_tissue: float = 0.25,
    mpp: float | None = None,
) -> PatchPlan:
    """Low-res grid over tissue and the children of each kept patch (see the module docstring).

    Raises:
        DataError: the slide lacks mpp/objective power and no ``mpp=`` was given.
        ValueError: ``hr_mag`` above the base magnification, or ``hr_mag / lr_mag`` not whole.
    """
    s = open_slide(slide, mpp=mpp)
    mag0 = s.base_magnification
    per_side = children_per_side(lr_mag, hr_mag)
    if hr_mag > mag0 * 1.01:
        raise ValueError(
            f"{s.path}: hr_mag {hr_mag:g}x is above the slide's base magnification {mag0:g}x "
            f"(mpp {s.mpp}); lower hr_mag or pass the right mpp="
        )
    ps0 = patch_size_level0(patch_size, mag0, lr_mag)
    hr_ps0 = patch_size_level0(patch_size, mag0, hr_mag)
    if hr_ps0 * per_side != ps0:
        raise ValueError(
            f"{s.path}: {patch_size} px at {lr_mag:g}x is {ps0} level-0 px, not {per_side} x {hr_ps0} "
            f"(= {patch_size} px at {hr_mag:g}x); choose magnifications that divide evenly"
        )
    all_coords = grid_coords(s.dimensions, ps0)
    frac = tissue.fraction(all_coords, ps0) if len(all_coords) else np.zeros(0, np.float32)
    keep = frac >= min_tissue
    coords = all_coords[keep]
    hr_coords = child_coords(coords, ps0, per_side)
    hr_frac = tissue.fraction(hr_coords, hr_ps0) if len(coords) else np.zeros((0, per_side**2), np.float32)
    hr_mask = hr_frac >= min_tissue
    # pigeonhole guarantees a valid child; guard against rounding at the mask resolution
    none = ~hr_mask.any(axis=1)
    if none.any():
        hr_mask[none, np.argmax(hr_frac[none], axis=1)] = True
    return PatchPlan(
        coords=coords,
        tissue_fraction=frac[keep].astype(np.float32),
        hr_coords=hr_coords,
        hr_tissue_fraction=hr_frac.astype(np.float32),
        hr_mask=hr_mask,
        patch_size=int(patch_size),
        patch_size_level0=ps0,
        hr_patch_size_level0=hr_ps0,
        lr_magnification=float(lr_mag),
        hr_magnification=float(hr_mag),
        base_magnification=float(mag0),
        dimensions=s.dimensions,
    )
