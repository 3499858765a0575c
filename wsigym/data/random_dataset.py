"""Random in-memory datasets: slides of random features with known structure, for tests and benchmarks.

:func:`random_dataset` draws every slide from one seeded generator and returns a
:class:`~wsigym.data.memory.MemoryDataset`. The knobs choose what a test needs the features to hold: a
label signal a MIL model can learn, clusters of similar rows (similar sets at a cosine threshold),
children near their parent or a fixed map of it, off-tissue children, tumour ground truth, extra views.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.memory import MemoryDataset

PATCH_SIZE_LEVEL0 = 2048
CHILDREN_FROM = ("noise", "parent", "map")


def random_dataset(
    n_slides: int,
    n_patches: int | tuple[int, int],
    dim: int,
    *,
    children: int = 0,
    classes: int | Sequence[str] = 2,
    clusters: int = 0,
    cluster_noise: float = 0.25,
    children_from: Literal["noise", "parent", "map"] = "noise",
    child_noise: float = 0.5,
    signal: float = 0.0,
    signal_patches: int = 3,
    off_tissue: float = 0.0,
    tumour: float | None = None,
    views: Mapping[str, float] | None = None,
    scatter: bool = False,
    split: Literal["stratified"] | tuple[int, int] = "stratified",
    seed: int = 0,
    name: str = "random",
) -> MemoryDataset:
    """``n_slides`` random slide bags, deterministic given ``seed``.

    Slide ``i`` is ``"s{i:03d}"`` with label ``i % C`` (``C`` classes). Each slide holds:

    - ``features`` ``Z``, ``(N, d)`` float32, ``N`` = ``n_patches`` or drawn from its inclusive range:
      standard normal rows, or with ``clusters > 0`` one of ``clusters`` standard-normal centres (shared by
      all slides) plus ``cluster_noise`` times standard normal noise.
    - ``coords`` ``(N, 2)`` int64: cells of a ``ceil(sqrt(N))``-wide grid of 2048 px patches, row by row,
      or (``scatter=True``) ``N`` distinct cells drawn at random.
    - with ``children = k > 0``: ``hr_features`` ``U``, ``(N, k, d)`` float32; ``children_from`` says what
      a child is: ``"noise"`` standard normal (unrelated to its parent), ``"parent"`` its parent's row plus
      ``child_noise`` times standard normal noise, ``"map"`` ``g(Z(i))`` for every child, ``g`` a fixed
      random nonlinear map (``tanh(Z A)``, each row standardised) that neither ``Z(i)`` nor a copy of
      another row predicts; ``hr_mask`` ``(N, k)`` bool, True but for the last child of each patch, off
      tissue with probability ``off_tissue``; ``hr_coords`` ``(N, k, 2)`` the ``sqrt(k) x sqrt(k)`` cells
      inside the parent (``k`` must be a square). ``meta`` says 5x and ``5 sqrt(k)`` x.
    - with ``signal != 0``: in a slide of class ``c > 0``, ``signal_patches`` random rows (and all their
      children) get ``signal`` added along feature block ``c`` (``d // C`` columns), so both low-res and
      high-res MIL models can learn the label; class 0 slides hold no signal.
    - with ``tumour = p``: ``tumour_fraction`` ``(N,)`` float32, each patch of a class ``c > 0`` slide
      tumour (1.0) with probability ``p``, all 0.0 in class 0 slides.
    - ``views[name]`` ``(N, d)`` float32 for each ``name: noise`` of ``views``: ``Z`` plus ``noise`` times
      standard normal noise (e.g. a precomputed oracle view).

    Args:
        n_slides: number of slides (>= 1).
        n_patches: low-res patches per slide, an int or an inclusive ``(low, high)`` range.
        dim: feature width ``d``.
        children: high-res children per patch (0: no high-res fields).
        classes: number of classes (names ``"class0"``, ...) or the class names.
        split: ``"stratified"``: one fold holding, class by class in slide order, the first half of a
            class's slides in ``train``, the next quarter in ``val``, the rest in ``test``;
            ``(n_val, n_test)``: the last ``n_test`` slides in ``test``, the ``n_val`` before them in
            ``val``, the others in ``train``.
        seed: the seed of the one ``numpy`` generator every draw comes from.
        name: the dataset's name.

    Returns:
        a :class:`MemoryDataset` holding the bags in slide order with that one fold.

    Raises:
        ValueError: naming the argument, for a size, probability or choice out of range.
    """
    names = _class_names(classes)
    lows, highs = _patch_range(n_patches)
    views = dict(views or {})
    _check(n_slides >= 1, "n_slides", "an int >= 1", n_slides)
    _check(dim >= 1, "dim", "an int >= 1", dim)
    per = math.isqrt(children) if children >= 0 else -1
    _check(children >= 0 and per * per == children, "children", "0 or a square int (1, 4, 9, ...)", children)
    _check(clusters >= 0, "clusters", "an int >= 0", clusters)
    _check(children_from in CHILDREN_FROM, "children_from", f"one of {CHILDREN_FROM}", children_from)
    fewest = f"an int in [1, {lows}] (the fewest patches) with a signal"
    _check(not signal or 0 < signal_patches <= lows, "signal_patches", fewest, signal_patches)
    _check(0.0 <= off_tissue <= 1.0, "off_tissue", "a probability in [0, 1]", off_tissue)
    _check(not off_tissue or children >= 2, "off_tissue", "0 with fewer than 2 children", off_tissue)
    _check(tumour is None or 0.0 <= tumour <= 1.0, "tumour", "None or a probability in [0, 1]", tumour)
    for key, scale in (("cluster_noise", cluster_noise), ("child_noise", child_noise), *views.items()):
        _check(scale >= 0.0, "views" if key in views else key, "a noise scale >= 0", scale)
    if split != "stratified":
        ok = isinstance(split, tuple) and len(split) == 2 and min(split) >= 0 and sum(split) <= n_slides
        _check(ok, "split", f"'stratified' or (n_val, n_test) with n_val + n_test <= {n_slides}", split)

    rng = np.random.default_rng(seed)
    meta = _meta(per)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim) * 0.5 if children and children_from == "map" else None
    centres = rng.normal(size=(clusters, dim)) if clusters else None
    block = max(1, dim // len(names))
    bags = []
    for i in range(n_slides):
        label = i % len(names)
        n = int(rng.integers(lows, highs + 1)) if highs > lows else lows
        side = math.ceil(math.sqrt(n))
        cells = rng.permutation(side * side)[:n] if scatter else np.arange(n)
        coords = np.stack([cells % side, cells // side], axis=1).astype(np.int64) * PATCH_SIZE_LEVEL0
        if centres is None:
            z = rng.normal(size=(n, dim))
        else:
            z = centres[rng.integers(0, clusters, size=n)] + cluster_noise * rng.normal(size=(n, dim))
        u = _children(rng, z, children, children_from, child_noise, mix) if children else None
        z = z.astype(np.float32)
        if signal and label > 0:
            hit = rng.choice(n, size=signal_patches, replace=False)
            cols = slice((label - 1) * block, label * block)
            z[hit, cols] += signal
            if u is not None:
                u[hit, :, cols] += signal
        hr_mask = np.ones((n, children), dtype=bool)
        if children and off_tissue:
            hr_mask[:, -1] = rng.random(n) > off_tissue
        truth = None
        if tumour is not None:
            truth = (rng.random(n) < tumour).astype(np.float32) * float(label > 0)
        extra = {
            key: (z + scale * rng.normal(size=(n, dim))).astype(np.float32) for key, scale in views.items()
        }
        bags.append(
            SlideBag(
                slide_id=f"s{i:03d}",
                features=z,
                coords=coords,
                label=label,
                class_names=names,
                hr_features=u,
                hr_mask=hr_mask if children else None,
                hr_coords=_child_coords(coords, per) if children else None,
                tumour_fraction=truth,
                meta=meta,
                views=extra,
            )
        )
    labels = [bag.label for bag in bags]
    ids = [bag.slide_id for bag in bags]
    folds = [_stratified(ids, labels, len(names)) if split == "stratified" else _tail(ids, *split)]
    return MemoryDataset(name, bags, folds, names)


def _children(
    rng: np.random.Generator,
    z: np.ndarray,
    k: int,
    children_from: str,
    child_noise: float,
    mix: np.ndarray | None,
) -> np.ndarray:
    """``(N, k, d)`` float32 children of the ``(N, d)`` rows ``z`` (see :func:`random_dataset`)."""
    n, dim = z.shape
    if children_from == "noise":
        u = rng.normal(size=(n, k, dim))
    elif children_from == "parent":
        u = z[:, None, :] + child_noise * rng.normal(size=(n, k, dim))
    else:
        g = np.tanh(z @ mix)
        g = (g - g.mean(1, keepdims=True)) / g.std(1, keepdims=True)
        u = np.repeat(g[:, None, :], k, axis=1)
    return u.astype(np.float32)


def _check(ok: bool, argument: str, expected: str, got: object) -> None:
    if not ok:
        raise ValueError(f"random_dataset: {argument} must be {expected}, got {got!r}")


def _class_names(classes: int | Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, int):
        _check(classes >= 1, "classes", "an int >= 1 or a sequence of class names", classes)
        return tuple(f"class{c}" for c in range(classes))
    names = tuple(classes)
    _check(len(names) >= 1 and len(set(names)) == len(names), "classes", "distinct class names", classes)
    return names


def _patch_range(n_patches: int | tuple[int, int]) -> tuple[int, int]:
    """``(low, high)``, both inclusive."""
    low, high = (n_patches, n_patches) if isinstance(n_patches, int) else tuple(n_patches)
    _check(
        1 <= low <= high,
        "n_patches",
        "an int >= 1 or an inclusive range (low, high), 1 <= low <= high",
        n_patches,
    )
    return int(low), int(high)


def _meta(per: int) -> SlideMeta:
    """5x patches of 2048 level-0 px; children of ``2048 / per`` px at ``5 per`` x (defaults without)."""
    if not per:
        return SlideMeta(patch_size_level0=PATCH_SIZE_LEVEL0, encoder="random")
    return SlideMeta(
        lr_magnification=5.0,
        hr_magnification=5.0 * per,
        patch_size_level0=PATCH_SIZE_LEVEL0,
        hr_patch_size_level0=PATCH_SIZE_LEVEL0 // per,
        encoder="random",
    )


def _child_coords(coords: np.ndarray, per: int) -> np.ndarray:
    """``(N, per * per, 2)``: the children's top-left corners, row by row inside each parent."""
    k = np.arange(per * per)
    offsets = np.stack([k % per, k // per], axis=1) * (PATCH_SIZE_LEVEL0 // per)
    return (coords[:, None, :] + offsets[None]).astype(np.int64)


def _stratified(ids: list[str], labels: list[int], num_classes: int) -> dict[str, list[str]]:
    fold: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c in range(num_classes):
        members = [s for s, label in zip(ids, labels, strict=True) if label == c]
        n_train, n_val = len(members) // 2, len(members) // 4
        fold["train"] += members[:n_train]
        fold["val"] += members[n_train : n_train + n_val]
        fold["test"] += members[n_train + n_val :]
    return fold


def _tail(ids: list[str], n_val: int, n_test: int) -> dict[str, list[str]]:
    n_train = len(ids) - n_val - n_test
    return {"train": ids[:n_train], "val": ids[n_train : n_train + n_val], "test": ids[n_train + n_val :]}
