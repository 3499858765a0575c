r"""Where the environments get their slides: ``Z``, the zoom oracle ``V`` and the ground truth, cached.

A :class:`SlideSource` holds every slide of one split of one dataset as torch tensors on one device,
packed into flat tensors (slide ``j`` occupies rows ``offsets[j] : offsets[j] + n[j]``):

=================  ===============  ==========================================================
attribute          shape            meaning
=================  ===============  ==========================================================
``z``              ``(sum N, d)``   low-res features ``Z`` (the initial state ``S_0``)
``v``              ``(sum N, d)``   zoom oracle ``V``: HAFED level 1 on the high-res children
``coords``         ``(sum N, 2)``   patch corners normalised to ``[0, 1]`` by the slide's extent
``grid``           ``(sum N, 2)``   integer grid cell ``(col, row)`` of each patch (rendering)
``tumour``         ``(sum N,)``     ground-truth tumour fraction, ``NaN`` where unknown
``labels``         ``(S,)``         slide labels
``n``              ``(S,)``         patches per slide
=================  ===============  ==========================================================

**The oracle.** ``V = hafed.aggregate(U, hr_mask)`` in eval mode, once per slide (SASHA's step 4).
A bag that already carries ``V`` as the view ``bag.views["oracle"]`` (``(N, d)``, e.g. SASHA's
step-4 features) uses it as is and needs no high-res features.

**Engine interface.** :class:`~wsigym.envs.zoom_batch.ZoomBatch` reads a source only through
``slide_ids``, ``class_names``, ``dim``, ``device``, ``n_list``, ``max_n``, ``labels``,
:meth:`SlideSource.index_of`, :meth:`SlideSource.episode_arrays` (at reset), :meth:`SlideSource.oracle`
(at each zoom) and :meth:`SlideSource.cells` (rendering). :class:`~wsigym.envs.live_source.LiveSlideSource`
implements the same interface with ``V(a)`` computed from the slide's pixels at zoom time.

**Normalised coordinates.** With ``x_min, y_min`` the smallest corner and
``extent = max(x_max - x_min, y_max - y_min)`` (both axes share one scale, so the aspect ratio is
kept), ``coords = (corner - min) / extent`` (0 for a one-patch slide).

**Cache.** ``V`` is cached on disk (:mod:`wsigym.envs.precompute_cache`, under ``$WSIGYM_CACHE``,
default ``~/.cache/wsigym``), one file per slide keyed by content digests of the slide's data and of
the HAFED weights: it is computed once (with a progress bar), and every later process (env, train,
evaluate, demo, tests) only reads ``Z`` and the cached rows; other weights or other data give other
keys. Concurrent first builders cooperate (one computes, the others wait and reuse). A dataset without
a :meth:`~wsigym.data.dataset.SlideDataset.content_digest` (in-memory datasets), or
``disk_cache=False``, computes ``V`` in memory. :attr:`SlideSource.content_key` identifies the split's
``V`` for caches derived from it (the evidence table). Sources are also cached in memory per
(dataset, split, fold, HAFED, device), so every environment built on the same data (e.g. the
sub-environments of a vector env) shares one copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from wsigym.data.bag import SlideBag
from wsigym.data.dataset import SlideDataset, open_dataset
from wsigym.envs.precompute_cache import OracleCache
from wsigym.errors import DataError

#: Name of the bag view that holds precomputed oracle rows ``V (N, d)``.
ORACLE_VIEW = "oracle"

_CACHE: dict[tuple[Any, ...], SlideSource] = {}


def resolve_dataset(dataset: str | Path | SlideDataset) -> SlideDataset:
    """A :class:`SlideDataset` from a registered name, a folder the data layer reads, or an instance."""
    if isinstance(dataset, SlideDataset):
        return dataset
    return open_dataset(dataset)


def resolve_model(model: Any, family: str, argument: str) -> torch.nn.Module:
    """A zoo model from an instance or a name / Hub repo / folder (:func:`zoo.load`).

    Raises:
        TypeError: when the instance is not of ``family``.
    """
    if isinstance(model, (str, Path)):
        import zoo

        model = zoo.load(str(model))
    got = getattr(model, "family", None)
    if got != family:
        raise TypeError(
            f"{argument} must be a {family!r} zoo model or its name, got {type(model).__name__} ({got!r})"
        )
    return model


def normalised_coords(coords: np.ndarray) -> np.ndarray:
    """``(N, 2)`` level-0 corners -> ``(N, 2)`` float32 in ``[0, 1]`` (one scale for both axes)."""
    c = coords.astype(np.float64)
    lo = c.min(axis=0)
    extent = float((c.max(axis=0) - lo).max())
    out = (c - lo) / extent if extent > 0 else np.zeros_like(c)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def grid_cells(coords: np.ndarray, patch_size: int) -> np.ndarray:
    """``(N, 2)`` level-0 corners -> integer cells ``(col, row)`` of a grid of ``patch_size`` pixels."""
    c = coords.astype(np.int64)
    return (c - c.min(axis=0)) // max(1, int(patch_size))


@dataclass
class _Slide:
    slide_id: str
    label: int
    z: np.ndarray
    v: np.ndarray
    coords: np.ndarray
    grid: np.ndarray
    tumour: np.ndarray


class SlideSource:
    """All slides of one split as flat device tensors (see the module docstring).

    Args:
        dataset: a :class:`SlideDataset`, a registered name (``"synth-c16"``) or a folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        fold: split fold.
        hafed: the HAFED whose level 1 computes ``V`` (eval mode, no gradients).
        device: where the tensors live.
        progress: show a progress bar while reading slides and computing ``V``.
        disk_cache: read and publish ``V`` in the disk cache (module docstring) when the dataset
            gives content digests; False computes it in memory.

    Attributes:
        content_key: digest of the split's ``V`` (HAFED weights, device type, slide digests in
            order), or None when ``V`` is not disk-cached.

    Raises:
        DataError: for an empty split, a slide without high-res features or an oracle view, or
            features whose width differs from HAFED's ``in_dim``.
        CacheError: when ``V`` must be built and the cache folder cannot be written.
    """

    def __init__(
        self,
        dataset: SlideDataset,
        split: str,
        fold: int,
        hafed: torch.nn.Module,
        device: torch.device | str = "cpu",
        progress: bool = True,
        disk_cache: bool = True,
    ) -> None:
        self.dataset = dataset
        self.split, self.fold = split, fold
        self.device = torch.device(device)
        self.slide_ids: list[str] = dataset.split(split, fold)
        self.class_names: tuple[str, ...] = tuple(dataset.class_names)
        if not self.slide_ids:
            raise DataError(f"dataset {dataset.name!r}", f"split {split!r} of fold {fold} has no slides")
        self.content_key: str | None = None
        slides = self._read_split(hafed, disk_cache, progress)
        self.dim = int(slides[0].z.shape[1])
        n = np.array([s.z.shape[0] for s in slides], dtype=np.int64)
        self.n = torch.as_tensor(n, device=self.device)
        self.n_list: list[int] = n.tolist()
        self.offsets_list: list[int] = np.concatenate([[0], np.cumsum(n)[:-1]]).tolist()
        self.offsets_list_np = np.asarray(self.offsets_list, dtype=np.int64)
        self.offsets = torch.as_tensor(self.offsets_list, dtype=torch.long, device=self.device)
        self.max_n = int(n.max())

        def cat(name: str, dtype: torch.dtype) -> Tensor:
            arr = np.concatenate([getattr(s, name) for s in slides])
            return torch.as_tensor(arr, dtype=dtype, device=self.device)

        self.z = cat("z", torch.float32)
        self.v = cat("v", torch.float32)
        self.coords = cat("coords", torch.float32)
        self.tumour = cat("tumour", torch.float32)
        self.grid = np.concatenate([s.grid for s in slides])
        self.labels = torch.as_tensor([s.label for s in slides], dtype=torch.long, device=self.device)
        self.has_truth: list[bool] = [bool(np.isfinite(s.tumour).all()) for s in slides]

    def _read_split(self, hafed: torch.nn.Module, disk_cache: bool, progress: bool) -> list[_Slide]:
        """Every slide of the split, ``V`` from the disk cache where it is there (module docstring)."""
        ds, where = self.dataset, f"{self.dataset.name}/{self.split}"
        digests = [ds.content_digest(sid) for sid in self.slide_ids] if disk_cache else None
        if digests is None or any(dg is None for dg in digests):
            return [
                self._read(ds.load(sid, hr=True), hafed)
                for sid in tqdm(self.slide_ids, desc=f"WSIZoom: V for {where}", disable=not progress)
            ]
        param = next(hafed.parameters())
        cache = OracleCache(hafed, param.device.type)
        self.content_key = cache.split_key(digests)
        slides: list[_Slide | None] = [None] * len(self.slide_ids)
        missing: list[int] = []
        for j, sid in enumerate(tqdm(self.slide_ids, desc=f"WSIZoom: reading {where}", disable=not progress)):
            bag = ds.load(sid, hr=False)
            self._check_width(bag, hafed)
            if ORACLE_VIEW in bag.views:  # V comes with the data
                slides[j] = self._read(bag, hafed)
            elif (v := cache.read(digests[j], bag.n, bag.dim)) is not None:
                slides[j] = self._read(bag, hafed, v)
            else:
                missing.append(j)
        if missing:
            with cache.building(f"V of {where} in {cache.folder}"):
                for j in tqdm(
                    missing, desc=f"WSIZoom: V for {where} (first use; cached)", disable=not progress
                ):
                    bag = ds.load(self.slide_ids[j], hr=True)
                    v = cache.read(digests[j], bag.n, bag.dim)  # published by another process meanwhile
                    slides[j] = self._read(bag, hafed, v)
                    if v is None:
                        cache.write(digests[j], slides[j].v)
        return slides  # type: ignore[return-value]

    def _check_width(self, bag: SlideBag, hafed: torch.nn.Module) -> None:
        d = int(getattr(hafed.config, "in_dim", bag.dim))
        if bag.dim != d:
            raise DataError(
                f"{self.dataset.name}/{bag.slide_id}",
                f"features have width {bag.dim}, but HAFED expects in_dim={d}",
            )

    def _read(self, bag: SlideBag, hafed: torch.nn.Module, v: np.ndarray | None = None) -> _Slide:
        """One slide; ``v`` (cached ``V``) or the bag's oracle view or HAFED on its high-res features."""
        source = f"{self.dataset.name}/{bag.slide_id}"
        self._check_width(bag, hafed)
        if v is not None:
            pass
        elif ORACLE_VIEW in bag.views:
            v = np.asarray(bag.views[ORACLE_VIEW], dtype=np.float32)
            if v.shape != bag.features.shape:
                raise DataError(
                    source, f"view {ORACLE_VIEW!r} must have shape {bag.features.shape}, got {v.shape}"
                )
        elif bag.hr_features is not None:
            param = next(hafed.parameters())
            u = torch.as_tensor(bag.hr_features, dtype=torch.float32, device=param.device)
            mask = None if bag.hr_mask is None else torch.as_tensor(bag.hr_mask, device=param.device)
            was_training = hafed.training
            hafed.eval()
            try:
                with torch.no_grad():
                    v = hafed.aggregate(u, mask).float().cpu().numpy()
            finally:
                hafed.train(was_training)
        else:
            raise DataError(
                source, f"needs high-res features (hr_features) or a precomputed oracle view {ORACLE_VIEW!r}"
            )
        tumour = (
            np.full(bag.n, np.nan, dtype=np.float32)
            if bag.tumour_fraction is None
            else np.asarray(bag.tumour_fraction, dtype=np.float32)
        )
        return _Slide(
            slide_id=bag.slide_id,
            label=int(bag.label),
            z=np.asarray(bag.features, dtype=np.float32),
            v=v,
            coords=normalised_coords(bag.coords),
            grid=grid_cells(bag.coords, bag.meta.patch_size_level0),
            tumour=tumour,
        )

    def __len__(self) -> int:
        return len(self.slide_ids)

    def index_of(self, slide: str | int) -> int:
        """Position of a slide in the split, from its id or its position.

        Raises:
            ValueError: for an id not in the split or a position out of range.
        """
        if isinstance(slide, (int, np.integer)) and not isinstance(slide, bool):
            if not 0 <= int(slide) < len(self):
                raise ValueError(f"slide index must be in [0, {len(self)}), got {slide}")
            return int(slide)
        try:
            return self.slide_ids.index(str(slide))
        except ValueError:
            raise ValueError(
                f"slide_id {slide!r} is not in split {self.split!r} (fold {self.fold}) of {self.dataset.name!r}"
            ) from None

    def rows(self, index: int) -> slice:
        """Rows of slide ``index`` in the flat tensors."""
        start = self.offsets_list[index]
        return slice(start, start + self.n_list[index])

    def episode_arrays(self, index: int) -> tuple[Tensor, np.ndarray, np.ndarray]:
        """``(Z (N, d) tensor, coords (N, 2) float32 normalised, tumour (N,) float32)`` of slide ``index``."""
        rows = self.rows(index)
        return self.z[rows], self.coords[rows].cpu().numpy(), self.tumour[rows].cpu().numpy()

    def oracle(self, slides: np.ndarray, patches: np.ndarray) -> Tensor:
        """``V (m, d)``: the oracle rows of patches ``patches[j]`` of slide positions ``slides[j]``."""
        flat = self.offsets_list_np[slides] + patches
        return self.v[torch.as_tensor(flat, device=self.device)]

    def cells(self, index: int) -> np.ndarray:
        """``int64 (N, 2)`` grid cells ``(col, row)`` of slide ``index`` (rendering)."""
        return self.grid[self.rows(index)]

    def budget_steps(self, budget: float) -> list[int]:
        """Zooms per slide, ``T = max(1, ceil(budget * N))`` (the one budget rule, SASHA pitfall 4)."""
        return [budget_steps(n, budget) for n in self.n_list]


def budget_steps(n: int, budget: float) -> int:
    """``T = max(1, ceil(budget * N))``: SASHA's training rule, never 0 (unlike its ``int(N f)``).

    A tiny float error is forgiven, so ``budget * N`` that is an integer up to rounding gives that integer.
    """
    return max(1, math.ceil(budget * n - 1e-9))


def slide_source(
    dataset: str | Path | SlideDataset,
    split: str,
    fold: int,
    hafed: torch.nn.Module,
    hafed_key: Any,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> SlideSource:
    """The cached :class:`SlideSource` of ``(dataset, split, fold, hafed_key, device)``.

    ``hafed_key`` identifies the HAFED weights (its name, or the instance itself).
    """
    ds_key: Any = dataset if isinstance(dataset, SlideDataset) else str(dataset)
    key = (
        ds_key if isinstance(ds_key, str) else id(ds_key),
        split,
        fold,
        hafed_key,
        str(torch.device(device)),
    )
    src = _CACHE.get(key)
    if src is None or (not isinstance(ds_key, str) and src.dataset is not ds_key):
        src = SlideSource(resolve_dataset(dataset), split, fold, hafed, device, progress)
        _CACHE[key] = src
    return src


def clear_cache() -> None:
    """Forget every cached :class:`SlideSource` (frees their tensors)."""
    _CACHE.clear()
