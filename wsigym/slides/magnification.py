"""Objective magnification from microns per pixel, and the pyramid level to read a magnification from.

Conventions (the lead's decision, shared by CLAM/TRIDENT practice):

- ``mag = 10 / mpp``: 0.25 um/px ~ 40x, 0.5 um/px ~ 20x. Scanners report e.g. 0.499 or 0.2527 um/px;
  the magnification is snapped to the nearest standard objective (2.5, 5, 10, 20, 40, 60, 80, ...)
  when it lies within :data:`SNAP_TOLERANCE` of it, so that patch sizes in level-0 pixels are whole
  numbers (256 px at 5x on a 0.499 um/px scan covers ``256 * 20 / 5 = 1024`` level-0 px).
- A patch of ``P`` px at target magnification ``M`` covers ``P * mag0 / M`` level-0 px.
- The level to read from is the one whose downsample is the largest one not above the needed
  downsample ``mag0 / M``; the region read there is then resampled to exactly ``P`` px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

STANDARD_MAGNIFICATIONS: tuple[float, ...] = (1.25, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0)
SNAP_TOLERANCE = 0.1  # relative


def magnification_from_mpp(mpp: float, *, snap: bool = True) -> float:
    """Objective magnification of a pixel size: ``10 / mpp``, snapped to a standard objective.

    Args:
        mpp: microns per pixel (> 0).
        snap: snap to the nearest of :data:`STANDARD_MAGNIFICATIONS` when within 10 %.
    """
    if not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive finite number of microns per pixel, got {mpp!r}")
    mag = 10.0 / float(mpp)
    if snap:
        nearest = min(STANDARD_MAGNIFICATIONS, key=lambda m: abs(m - mag) / m)
        if abs(nearest - mag) / nearest <= SNAP_TOLERANCE:
            return nearest
    return mag


def patch_size_level0(patch_size: int, base_magnification: float, target_magnification: float) -> int:
    """Side in level-0 px of a ``patch_size`` px patch at ``target_magnification``.

    ``round(patch_size * base_magnification / target_magnification)``.
    """
    if target_magnification <= 0:
        raise ValueError(f"target magnification must be > 0, got {target_magnification}")
    return round(patch_size * base_magnification / target_magnification)


def children_per_side(lr_magnification: float, hr_magnification: float) -> int:
    """``s = hr / lr`` as a whole number (4 for 5x -> 20x); ``k = s**2`` children per low-res patch.

    Raises:
        ValueError: when ``hr / lr`` is not a whole number >= 1.
    """
    ratio = hr_magnification / lr_magnification
    s = round(ratio)
    if s < 1 or abs(ratio - s) > 1e-6:
        raise ValueError(
            f"hr_mag / lr_mag must be a whole number >= 1 (e.g. 20 / 5 = 4), got "
            f"{hr_magnification} / {lr_magnification} = {ratio:g}"
        )
    return s


def level_for_downsample(level_downsamples: Sequence[float], downsample: float) -> int:
    """Index of the level with the largest downsample not above ``downsample`` (within 1 %).

    Reading there and shrinking keeps full detail; level 0 when every level is coarser.
    """
    best = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= downsample * 1.01 and ds >= level_downsamples[best]:
            best = i
    return best
