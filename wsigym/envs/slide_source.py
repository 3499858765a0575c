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

**Cache.** What a source holds per slide (``Z``, ``V``, coordinates, grid cells, ground truth) is
cached on disk (:mod:`wsigym.envs.precompute_cache`, under ``$WSIGYM_CACHE``, default
``~/.cache/wsigym``), one file per slide keyed by content digests of the slide's data and of the HAFED
weights: ``V`` is computed once (with a progress bar), and every later process (env, train, evaluate,
demo, tests) reads these files instead of the slides; other weights or other data give other keys.
Concurrent first builders cooperate (one computes, the others wait and reuse). A dataset without a
:meth:`~wsigym.data.dataset.SlideDataset.content_digest` (in-memory datasets), or ``disk_cache=False``,
computes everything in memory. :attr:`SlideSource.content_key` identifies the split's ``V`` for caches
derived from it (the evidence table). Sources are also cached in memory per (dataset, split, fold,
HAFED, device), so every environment built on the same data (e.g. the sub-environments of a vector
env) shares one copy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from wsigym.data.bag import SlideBag
from wsigym.data.dataset import SlideDataset
from wsigym.data.formats import open_dataset
from wsigym.envs.precompute_cache import RECORD, SlideRecordCache
from wsigym.errors import DataError

#: Name of the bag view that holds precomputed oracle rows ``V (N, d)``.
ORACLE_VIEW = "oracle"

_CACHE: dict[tuple[Any, ...], SlideSource] = {}
#: The per-row tensors of a source (``(sum N, ...)``), shared read-only when a source is sent to workers.
_FLAT_TENSORS = ("z", "v", "coords", "tumour")


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


class SlideIndex:
    """A slide's position from its id or its position, shared by both slide sources
    (:class:`SlideSource`, :class:`~wsigym.envs.live_source.LiveSlideSource`): they hold ``slide_ids``
    and say in :meth:`describe` what the slides are, for the error."""

    slide_ids: Sequence[str]

    def describe(self) -> str:
        """What the slides are (``"split 'test' (fold 0) of 'synth-c16'"``), for error messages."""
        raise NotImplementedError

    def index_of(self, slide: str | int) -> int:
        """Position of ``slide`` in ``slide_ids``, given its id or its position (a non-bool integer).

        Raises:
            ValueError: for a position out of range or an id not in ``slide_ids`` (naming :meth:`describe`).
        """
        if isinstance(slide, (int, np.integer)) and not isinstance(slide, bool):
            if not 0 <= int(slide) < len(self.slide_ids):
                raise ValueError(f"slide index must be in [0, {len(self.slide_ids)}), got {slide}")
            return int(slide)
        try:
            return list(self.slide_ids).index(str(slide))
        except ValueError:
            raise ValueError(f"slide_id {slide!r} is not in {self.describe()}") from None


@dataclass
class _Slide:
    slide_id: str
    z: np.ndarray
    v: np.ndarray
    coords: np.ndarray
    grid: np.ndarray
    tumour: np.ndarray


class SlideSource(SlideIndex):
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
        flat, n_list = self._read_split(hafed, disk_cache, progress)
        n = np.asarray(n_list, dtype=np.int64)
        self.dim = int(flat["z"].shape[1])
        self.n = torch.as_tensor(n, device=self.device)
        self.n_list: list[int] = n.tolist()
        self.offsets_list: list[int] = np.concatenate([[0], np.cumsum(n)[:-1]]).tolist()
        self.offsets_list_np = np.asarray(self.offsets_list, dtype=np.int64)
        self.offsets = torch.as_tensor(self.offsets_list, dtype=torch.long, device=self.device)
        self.max_n = int(n.max())
        self.z = torch.as_tensor(flat["z"], dtype=torch.float32, device=self.device)
        self.v = torch.as_tensor(flat["v"], dtype=torch.float32, device=self.device)
        self.coords = torch.as_tensor(flat["coords"], dtype=torch.float32, device=self.device)
        self.tumour = torch.as_tensor(flat["tumour"], dtype=torch.float32, device=self.device)
        self.grid = flat["grid"]
        labels = [dataset.label(sid) for sid in self.slide_ids]
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        self.has_truth: list[bool] = [
            bool(np.isfinite(flat["tumour"][self.rows(j)]).all()) for j in range(len(self.slide_ids))
        ]

    def _read_split(
        self, hafed: torch.nn.Module, disk_cache: bool, progress: bool
    ) -> tuple[dict[str, np.ndarray], list[int]]:
        """The flat arrays of :data:`~wsigym.envs.precompute_cache.RECORD` and ``N`` of every slide,
        from the disk cache where possible (module docstring)."""
        ds, where = self.dataset, f"{self.dataset.name}/{self.split}"
        digests = [ds.content_digest(sid) for sid in self.slide_ids] if disk_cache else None
        if digests is None or any(dg is None for dg in digests):
            slides = [
                self._read(ds.load(sid, hr=True), hafed)
                for sid in tqdm(self.slide_ids, desc=f"WSIZoom: V for {where}", disable=not progress)
            ]
            flat = {name: np.concatenate([getattr(sl, name) for sl in slides]) for name in RECORD}
            return flat, [sl.z.shape[0] for sl in slides]
        cache = SlideRecordCache(hafed, next(hafed.parameters()).device.type)
        self.content_key = cache.split_key(digests)
        shapes = [cache.shape(dg) for dg in digests]
        missing = [j for j, shape in enumerate(shapes) if shape is None]
        if missing:
            with cache.building(f"V of {where} in {cache.folder}"):
                for j in tqdm(
                    missing, desc=f"WSIZoom: V for {where} (first use; cached)", disable=not progress
                ):
                    shapes[j] = cache.shape(digests[j])  # published by another process while we waited
                    if shapes[j] is None:
                        slide = self._read(ds.load(self.slide_ids[j], hr=True), hafed)
                        cache.write(digests[j], {name: getattr(slide, name) for name in RECORD})
                        shapes[j] = cache.shape(digests[j])
        n_list = [shape[0] for shape in shapes]  # type: ignore[index]
        d = shapes[0][1]  # type: ignore[index]
        flat = {
            name: np.empty((sum(n_list), *(d if t is None else t for t in trailing)), dtype=dtype)
            for name, (dtype, trailing) in RECORD.items()
        }
        start = 0
        for sid, dg, n in tqdm(
            list(zip(self.slide_ids, digests, n_list)), desc=f"WSIZoom: reading {where}", disable=not progress
        ):
            if not cache.read_into(dg, {name: a[start : start + n] for name, a in flat.items()}):
                raise DataError(
                    cache.path(dg), f"cached record of slide {sid!r} is unreadable; delete it and run again"
                )
            start += n
        return flat, n_list

    def _read(self, bag: SlideBag, hafed: torch.nn.Module) -> _Slide:
        """One slide; ``V`` from the bag's oracle view or HAFED level 1 on its high-res features."""
        source = f"{self.dataset.name}/{bag.slide_id}"
        d = int(getattr(hafed.config, "in_dim", bag.dim))
        if bag.dim != d:
            raise DataError(source, f"features have width {bag.dim}, but HAFED expects in_dim={d}")
        if ORACLE_VIEW in bag.views:
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
            z=np.asarray(bag.features, dtype=np.float32),
            v=v,
            coords=normalised_coords(bag.coords),
            grid=grid_cells(bag.coords, bag.meta.patch_size_level0),
            tumour=tumour,
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the flat tensors as numpy arrays (CPU sources), so that Ray's object store holds
        them once and every worker maps them read-only instead of unpickling a copy each."""
        state = self.__dict__.copy()
        if self.device.type == "cpu":
            for name in _FLAT_TENSORS:
                state[name] = state[name].numpy()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in _FLAT_TENSORS:
            if isinstance(state.get(name), np.ndarray):
                with warnings.catch_warnings():  # a read-only shared buffer: the source never writes into it
                    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                    state[name] = torch.from_numpy(state[name])
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.slide_ids)

    def describe(self) -> str:
        """``"split 'test' (fold 0) of 'synth-c16'"`` (:class:`SlideIndex`)."""
        return f"split {self.split!r} (fold {self.fold}) of {self.dataset.name!r}"

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
    key = _cache_key(ds_key, split, fold, hafed_key, device)
    src = _CACHE.get(key)
    if src is None or (not isinstance(ds_key, str) and src.dataset is not ds_key):
        src = SlideSource(resolve_dataset(dataset), split, fold, hafed, device, progress)
        _CACHE[key] = src
    return src


def _cache_key(ds_key: Any, split: str, fold: int, hafed_key: Any, device: torch.device | str) -> tuple:
    return (
        ds_key if isinstance(ds_key, str) else id(ds_key),
        split,
        fold,
        hafed_key,
        str(torch.device(device)),
    )


def adopt_source(source: SlideSource, hafed_key: Any) -> None:
    """Let :func:`slide_source` serve ``source`` (built in another process and received whole, e.g. from
    Ray's object store) to environments made on ``dataset=source.dataset`` with ``hafed=hafed_key``
    (a HAFED instance) on the source's split, fold and device."""
    _CACHE[_cache_key(source.dataset, source.split, source.fold, hafed_key, source.device)] = source


def clear_cache() -> None:
    """Forget every cached :class:`SlideSource` (frees their tensors)."""
    _CACHE.clear()
