"""Pair high-magnification patches with their low-magnification parents by coordinates.

A low-res patch of side ``P`` (level-0 pixels) at top-left ``(x, y)`` holds ``s x s`` child slots of
side ``c = P / s``. A high-res patch at ``(x', y')`` belongs to the parent that contains it entirely,
``x <= x' and x' + c <= x + P`` (same for ``y``), and goes to slot ``row * s + col`` with
``col = (x' - x) // c`` and ``row = (y' - y) // c``. So ``k = s^2 = (P / c)^2`` (16 for 5x -> 20x).

Slots that no high-res patch fills (background at high magnification) are masked out
(``hr_mask = False``, zero features, the slot's nominal coordinates). Parents with no child at all can be
dropped (``childless="drop"``) or rejected. A child that fits no parent, or two children in one slot, is
an error naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsigym.errors import DataError


@dataclass
class Paired:
    """Result of :func:`pair_children`.

    Attributes:
        keep: (N,) bool, low-res patches kept (all True unless childless parents were dropped).
        hr_features: (N_kept, k, d) float32, zeros in empty slots.
        hr_mask: (N_kept, k) bool, True where a child fills the slot.
        hr_coords: (N_kept, k, 2) int64 level-0 top-left of each slot.
        n_dropped: number of childless parents dropped.
    """

    keep: np.ndarray
    hr_features: np.ndarray
    hr_mask: np.ndarray
    hr_coords: np.ndarray
    n_dropped: int


def children_per_side(patch_size_level0: int, hr_patch_size_level0: int, source: str | Path) -> int:
    """``s = P / c``; raises :class:`DataError` unless ``c`` divides ``P``."""
    p, c = int(patch_size_level0), int(hr_patch_size_level0)
    if c <= 0 or p <= 0 or p % c != 0:
        raise DataError(
            source,
            f"high-res patch size {c} must divide the low-res patch size {p} (level-0 pixels) to pair children",
        )
    return p // c


def slot_coords(coords: np.ndarray, patch_size_level0: int, hr_patch_size_level0: int) -> np.ndarray:
    """Nominal level-0 top-left of every slot: (N, 2) -> (N, k, 2), slot ``row * s + col``."""
    s = max(1, patch_size_level0 // hr_patch_size_level0)
    rows, cols = np.divmod(np.arange(s * s), s)
    offsets = np.stack([cols, rows], axis=1).astype(np.int64) * hr_patch_size_level0  # (k, 2) as (x, y)
    return coords.astype(np.int64)[:, None, :] + offsets[None]


def _keys(xy: np.ndarray) -> np.ndarray:
    # Unique int64 key per (x, y); level-0 coordinates are far below 2**31.
    return (xy[..., 0].astype(np.int64) << 32) + (xy[..., 1].astype(np.int64) + (1 << 31))


def pair_children(
    coords: np.ndarray,
    child_features: np.ndarray,
    child_coords: np.ndarray,
    patch_size_level0: int,
    hr_patch_size_level0: int,
    source: str | Path,
    *,
    childless: str = "drop",
) -> Paired:
    """Group high-res patches under their low-res parents.

    Args:
        coords: (N, 2) int64 level-0 top-left of the low-res patches.
        child_features: (M, d) features of the high-res patches.
        child_coords: (M, 2) int64 level-0 top-left of the high-res patches.
        patch_size_level0: low-res patch side ``P`` in level-0 pixels.
        hr_patch_size_level0: high-res patch side ``c`` in level-0 pixels.
        source: file named in errors.
        childless: ``"drop"`` removes low-res patches without any child; ``"error"`` raises.

    Returns:
        :class:`Paired` with ``k = (P / c)^2`` slots per parent.

    Raises:
        DataError: a child inside no parent, two children in one slot, or (``childless="error"``) a
            parent without children.
    """
    s = children_per_side(patch_size_level0, hr_patch_size_level0, source)
    p, c = int(patch_size_level0), int(hr_patch_size_level0)
    k = s * s
    coords = np.asarray(coords, dtype=np.int64)
    child_coords = np.asarray(child_coords, dtype=np.int64)
    n, m = coords.shape[0], child_coords.shape[0]
    parent_of = np.full(m, -1, dtype=np.int64)
    slot_of = np.full(m, -1, dtype=np.int64)

    # Fast path: the child's top-left is exactly on a slot of a parent (grids aligned).
    parent_keys = _keys(coords)
    order = np.argsort(parent_keys, kind="stable")
    sorted_keys = parent_keys[order]
    for slot in range(k):
        row, col = divmod(slot, s)
        todo = np.flatnonzero(parent_of < 0)
        if todo.size == 0:
            break
        cand = _keys(child_coords[todo] - np.array([col * c, row * c], dtype=np.int64))
        pos = np.searchsorted(sorted_keys, cand)
        pos_ok = np.minimum(pos, max(n - 1, 0))
        hit = (pos < n) & (sorted_keys[pos_ok] == cand) if n else np.zeros(todo.size, bool)
        parent_of[todo[hit]] = order[pos_ok[hit]]
        slot_of[todo[hit]] = slot

    # Slow path: children off the slot grid; find any parent containing them (spatial buckets of size P).
    rest = np.flatnonzero(parent_of < 0)
    if rest.size:
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, (x, y) in enumerate(coords.tolist()):
            buckets.setdefault((x // p, y // p), []).append(i)
        for j in rest.tolist():
            x, y = child_coords[j].tolist()
            found = -1
            for bx in {(x + c - p) // p, x // p}:
                for by in {(y + c - p) // p, y // p}:
                    for i in buckets.get((bx, by), []):
                        px, py = coords[i]
                        if (
                            px <= x
                            and x + c <= px + p
                            and py <= y
                            and y + c <= py + p
                            and (found < 0 or i < found)
                        ):
                            found = i
            if found < 0:
                raise DataError(
                    source,
                    f"{rest.size} high-res patches fit inside no low-res patch (first: child {j} at "
                    f"{[x, y]}, child size {c}, parent size {p} level-0 px)",
                )
            parent_of[j] = found
            slot_of[j] = ((y - int(coords[found, 1])) // c) * s + (x - int(coords[found, 0])) // c

    flat = parent_of * k + slot_of
    uniq, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[np.argmax(counts > 1)])
        i, sl = divmod(dup, k)
        raise DataError(
            source,
            f"two high-res patches fall into slot {sl} of low-res patch {i} at {coords[i].tolist()}",
        )

    d = child_features.shape[1]
    hr_features = np.zeros((n, k, d), dtype=np.float32)
    hr_mask = np.zeros((n, k), dtype=bool)
    hr_features[parent_of, slot_of] = child_features
    hr_mask[parent_of, slot_of] = True
    hr_coords = slot_coords(coords, p, c)
    hr_coords[parent_of, slot_of] = child_coords

    keep = hr_mask.any(axis=1)
    n_dropped = int((~keep).sum())
    if n_dropped and childless == "error":
        i = int(np.argmin(keep))
        raise DataError(
            source,
            f"{n_dropped} low-res patches have no high-res child (first: patch {i} at {coords[i].tolist()})",
        )
    if childless not in ("drop", "error"):
        raise ValueError(f"childless must be 'drop' or 'error', got {childless!r}")
    return Paired(keep, hr_features[keep], hr_mask[keep], hr_coords[keep], n_dropped)
