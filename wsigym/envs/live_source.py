r"""Live slides for ``WSIZoom-v0``: low-res features at reset, a zoom really reads and encodes pixels.

:class:`LiveSlideSource` is the slide source of ``WSIZoom-v0(dataset=LiveSlides(slides, labels, encoder))``
(either env, :func:`wsigym.evaluate.evaluate`; :class:`LiveSlides` holds the settings) (SASHA's
``step7_inference_with_fe.py`` path: zooming reads the high-res sub-patches of the chosen patch from
the slide, encodes them and aggregates them with HAFED level 1). Per slide:

1. **at construction** (all slides, so that the padded patch count ``P`` is known): open the file
   (:class:`~wsigym.slides.reader.SlideReader`; a slide without mpp / objective power raises a
   :class:`~wsigym.errors.DataError` unless ``mpp=`` is given), segment the tissue
   (:func:`~wsigym.slides.tissue.segment_tissue`) and plan the low-res grid with its ``k`` children
   per patch (:func:`~wsigym.slides.grid.plan_patches`). The handle is closed again;
2. **at the first reset on the slide**: ``Z (N, d)`` = the encoder on the ``N`` low-res patches
   (read at ``lr_mag``), kept in memory; with ``cache_dir`` also written to disk and read back by
   later sources (see Cache);
3. **at every zoom into patch a**: read the ``k`` children of ``a`` at ``hr_mag``
   (:func:`~wsigym.slides.reader.read_children`), ``U_a = encoder(children) (k, d)``, and
   ``V(a) = HAFED.aggregate(U_a, hr_mask_a) (d,)`` (eval mode). Nothing else needs high-res pixels:
   the TSU uses only ``Z`` and ``V(a)``. ``remember_zooms=True`` keeps ``V(a)`` in memory for later
   episodes on the same slide (faster training; off by default, so every zoom reads the slide).

It offers the engine interface of :class:`~wsigym.envs.slide_source.SlideSource`
(``slide_ids``, ``class_names``, ``dim``, ``device``, ``n_list``, ``max_n``, ``labels``,
``has_truth``, :meth:`index_of`, :meth:`episode_arrays`, :meth:`oracle`, :meth:`cells`), so
:class:`~wsigym.envs.zoom_batch.ZoomBatch` runs it unchanged.

**Ground truth** (``info["hit_tumour"]``): per-slide low-res tumour fractions ``(N,)`` from
``truth={slide_id: f}`` with ``f`` a callable ``(coords (N, 2) level-0, size_level0) -> (N,)`` or an
array ``(N,)`` in plan order; a :class:`~wsigym.slides.synthetic_slides.SyntheticSlide` given in ``slides``
brings its own (the area fraction of its tumour ellipses, :func:`~wsigym.slides.synthetic_slides.tumour_fraction`).

**Cache** (``cache_dir``): a TRIDENT job folder (:mod:`wsigym.slides.extract`):
``{lr}x_{P}px_0px_overlap/patches/<slide>_patches.h5`` and ``{hr}x_.../patches/<slide>_patches.h5``
(the plan: no segmentation on later runs) and ``{lr}x_.../features_<encoder>/<slide>.h5`` (``Z``).
The features' ``encoder`` attribute is ``"<encoder name>@<fingerprint>"`` with the fingerprint a
SHA-256 of the encoder's weights and preprocessing (:func:`encoder_fingerprint`), so features of other
weights under the same name are recomputed, never reused. The plan files do not record
``min_tissue`` / tissue options: use one cache folder per setting.

**Pickling.** Slides are stored as paths (:class:`SlideReader` pickles as its path and reopens in
the new process), so a source, and an environment holding it, can be sent to subprocess workers.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from wsigym.data.labels_csv import read_labels_csv
from wsigym.envs.slide_source import SlideIndex, grid_cells, normalised_coords
from wsigym.errors import DataError
from wsigym.slides.encoders import PatchEncoder, build_encoder
from wsigym.slides.extract import encode_patches, is_complete, list_slides, output_paths, read_plan, write_h5
from wsigym.slides.grid import PatchPlan, plan_patches
from wsigym.slides.reader import SlideReader, read_children
from wsigym.slides.synthetic_slides import SyntheticSlide, tumour_fraction
from wsigym.slides.tissue import segment_tissue

SlideSpec = str | os.PathLike | SyntheticSlide
#: A per-slide ground truth: a callable ``(coords (N, 2), size_level0) -> (N,)`` or an array ``(N,)``.
TruthSpec = Callable[[np.ndarray, int], np.ndarray] | np.ndarray | Sequence[float]


def encoder_fingerprint(encoder: PatchEncoder) -> str:
    """SHA-256 (16 hex digits) of the encoder's weights, input size and normalisation.

    Uses ``encoder.fingerprint`` when the encoder defines it, else hashes the tensors of
    ``encoder.module.state_dict()``; an encoder with neither is identified by its name alone.
    """
    own = getattr(encoder, "fingerprint", None)
    if isinstance(own, str):
        return own
    h = hashlib.sha256()
    h.update(f"{encoder.name}|{encoder.dim}|{encoder.input_size}|{encoder.mean}|{encoder.std}".encode())
    module = getattr(encoder, "module", None)
    if isinstance(module, torch.nn.Module):
        for key, value in module.state_dict().items():
            h.update(key.encode())
            t = value.detach().to("cpu").contiguous()
            h.update(str(t.dtype).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def resolve_labels(
    labels: Mapping[str, int | str] | str | os.PathLike[str] | None,
    slide_ids: Sequence[str],
    class_names: Sequence[str] | None,
) -> tuple[list[int], tuple[str, ...]]:
    """Labels of ``slide_ids`` and the class names.

    ``labels`` is a CSV (``slide_id,label`` with class names, :func:`~wsigym.data.labels_csv.read_labels_csv`)
    or a mapping ``slide_id -> class index or class name``. Without ``class_names``: the CSV's sorted
    classes; for a mapping of names, the sorted distinct names; for indices, ``("negative", "positive")``
    when they are 0/1, else ``class_0 ... class_{C-1}``.

    Raises:
        ValueError: no labels, a slide without a label, an unknown class name or an index out of range.
    """
    if labels is None:
        raise ValueError(
            "labels= is required with slides=: a mapping slide_id -> class (name or index) or a CSV path"
        )
    if isinstance(labels, (str, os.PathLike)):
        index, classes = read_labels_csv(labels, class_names)
        mapping: dict[str, int | str] = dict(index)
        class_names = classes
    else:
        mapping = {str(k): v for k, v in dict(labels).items()}
    missing = [s for s in slide_ids if s not in mapping]
    if missing:
        raise ValueError(f"labels= has no label for slide(s) {missing} (labels are keyed by file stem)")
    values = [mapping[s] for s in slide_ids]
    names = [v for v in values if isinstance(v, str)]
    if class_names is None:
        if names:
            if len(names) != len(values):
                raise ValueError("labels= mixes class names and indices; use one kind")
            class_names = tuple(sorted(set(names)))
        else:
            top = max(int(v) for v in values) + 1
            class_names = ("negative", "positive") if top <= 2 else tuple(f"class_{i}" for i in range(top))
    classes = tuple(str(c) for c in class_names)
    out = []
    for sid, v in zip(slide_ids, values, strict=True):
        if isinstance(v, str):
            if v not in classes:
                raise ValueError(f"label {v!r} of slide {sid!r} is not one of the classes {list(classes)}")
            out.append(classes.index(v))
        else:
            i = int(v)
            if not 0 <= i < len(classes):
                raise ValueError(f"label {i} of slide {sid!r} is outside the classes {list(classes)}")
            out.append(i)
    return out, classes


def resolve_slides(slides: SlideSpec | Iterable[SlideSpec]) -> list[tuple[Path, SyntheticSlide | None]]:
    """A folder (its slide files, sorted), one file, or a list of files / :class:`SyntheticSlide`.

    Raises:
        ValueError: no slide, or two slides with the same id (file stem).
    """
    if isinstance(slides, SyntheticSlide):
        items: list[tuple[Path, SyntheticSlide | None]] = [(Path(slides.path), slides)]
    elif isinstance(slides, (str, os.PathLike)):
        p = Path(slides)
        if not p.exists():
            raise DataError(p, "no such slide file or folder")
        items = [(q, None) for q in list_slides(p)]
    else:
        items = []
        for s in slides:
            if isinstance(s, SyntheticSlide):
                items.append((Path(s.path), s))
            else:
                items.append((Path(s), None))
    if not items:
        raise ValueError(f"slides={slides!r} holds no slide file")
    seen: dict[str, Path] = {}
    for p, _ in items:
        if p.stem in seen:
            raise ValueError(f"two slides share the id {p.stem!r}: {seen[p.stem]} and {p}")
        seen[p.stem] = p
    return items


@dataclass
class LiveSlide:
    """One planned slide.

    Attributes:
        slide_id: file stem.
        reader: the lazily opened slide.
        plan: low-res grid and children (``plan.coords (N, 2)``, ``plan.hr_mask (N, k)``).
        label: class index.
        tumour: ``float32 (N,)`` ground-truth tumour fraction, NaN when unknown.
        coords: ``float32 (N, 2)`` normalised corners (observation ``coords``).
        cells: ``int64 (N, 2)`` grid cells ``(col, row)``.
    """

    slide_id: str
    reader: SlideReader
    plan: PatchPlan
    label: int
    tumour: np.ndarray
    coords: np.ndarray
    cells: np.ndarray


@dataclass(frozen=True)
class LiveSlides:
    """Live slides as a slide source: ``WSIZoomEnv(dataset=LiveSlides(...))`` (and the vector env,
    :func:`wsigym.evaluate.evaluate`) read these whole-slide images instead of precomputed features.

    A description only: the environment builds it into a :class:`LiveSlideSource` with its HAFED,
    device and progress setting (:meth:`source`). The settings and their defaults are stated here once.

    Attributes:
        slides: a folder, a slide file, or a list of files / :class:`SyntheticSlide` (ids = file stems).
        labels: CSV path or ``{slide_id: class name or index}`` (:func:`resolve_labels`).
        encoder: a :class:`~wsigym.slides.encoders.PatchEncoder` or a spec for
            :func:`~wsigym.slides.encoders.build_encoder` (``"timm:vit_small_patch16_224"``; random
            weights unless the spec names a Hub id). HAFED's and the TSU's ``in_dim`` must equal its ``dim``.
        mpp: microns per level-0 px for every slide, or ``{slide_id: mpp}``; overrides the files.
        class_names: the classes (see :func:`resolve_labels`).
        lr_mag, hr_mag: magnifications of the state and of a zoom (``hr_mag / lr_mag`` whole).
        patch_size: px per patch at either magnification.
        min_tissue: tissue fraction to keep a low-res patch / mark a child valid.
        tissue_kwargs: forwarded to :func:`~wsigym.slides.tissue.segment_tissue`.
        cache_dir: TRIDENT job folder for the plan and ``Z`` (None: memory only).
        truth: ``{slide_id: TruthSpec}`` ground-truth tumour fractions (a :class:`SyntheticSlide`
            brings its own).
        batch_size: images per encoder call.
        remember_zooms: keep ``V(a)`` in memory across episodes.
        memory_slides: how many slides' ``Z`` to keep in memory (least recently used are dropped).

    Raises:
        ValueError: without ``encoder``.
    """

    slides: SlideSpec | Iterable[SlideSpec]
    labels: Mapping[str, int | str] | str | os.PathLike[str] | None = None
    encoder: PatchEncoder | str | None = None
    mpp: float | Mapping[str, float] | None = None
    class_names: Sequence[str] | None = None
    lr_mag: float = 5.0
    hr_mag: float = 20.0
    patch_size: int = 256
    min_tissue: float = 0.25
    tissue_kwargs: Mapping[str, Any] | None = None
    cache_dir: str | os.PathLike[str] | None = None
    truth: Mapping[str, TruthSpec] | None = None
    batch_size: int = 32
    remember_zooms: bool = False
    memory_slides: int = 64

    def __post_init__(self) -> None:
        if self.encoder is None:
            raise ValueError(
                "slides= needs encoder=: a PatchEncoder or a spec such as 'timm:vit_small_patch16_224'"
            )

    @property
    def name(self) -> str:
        """A label for reports: ``live:<folder or file>`` or ``live:<k> slides``."""
        if isinstance(self.slides, (str, os.PathLike)):
            return f"live:{Path(self.slides).name}"
        if isinstance(self.slides, SyntheticSlide):
            return f"live:{Path(self.slides.path).name}"
        return f"live:{len(list(self.slides))} slides"

    def source(self, hafed: torch.nn.Module, device: str | torch.device, progress: bool) -> LiveSlideSource:
        """The :class:`LiveSlideSource` of these slides with the environment's HAFED and device."""
        settings = {f.name: getattr(self, f.name) for f in fields(self)}
        return LiveSlideSource(hafed=hafed, device=device, progress=progress, **settings)


class LiveSlideSource(SlideIndex):
    """Slides read live (module docstring).

    Args:
        slides, labels, encoder: see :class:`LiveSlides`.
        hafed: the frozen HAFED (eval mode) whose level 1 aggregates the children; ``in_dim`` must
            equal ``encoder.dim``.
        device: torch device of the returned tensors.
        progress: progress bars while planning and encoding.
        settings: the other fields of :class:`LiveSlides` (``mpp``, ``lr_mag``, ``cache_dir``, ...).

    Raises:
        DataError: an unreadable slide, a slide without mpp (and no ``mpp=``), a slide without tissue.
        ValueError: bad labels, duplicate slide ids, or ``hafed.in_dim != encoder.dim``.
        TypeError: a setting :class:`LiveSlides` does not have.
    """

    def __init__(
        self,
        slides: SlideSpec | Iterable[SlideSpec],
        labels: Mapping[str, int | str] | str | os.PathLike[str] | None,
        encoder: PatchEncoder | str,
        hafed: torch.nn.Module,
        *,
        device: str | torch.device = "cpu",
        progress: bool = True,
        **settings: Any,
    ) -> None:
        spec = LiveSlides(slides, labels, encoder, **settings)  # TypeError naming an unknown setting
        self.device = torch.device(device)
        self.encoder: PatchEncoder = build_encoder(encoder) if isinstance(encoder, str) else encoder
        if not isinstance(self.encoder, PatchEncoder):
            raise TypeError(
                f"encoder must be a PatchEncoder (name, dim, input_size, mean, std, __call__) or a spec "
                f"such as 'timm:vit_small_patch16_224', got {type(encoder).__name__}"
            )
        self.dim = int(self.encoder.dim)
        in_dim = int(getattr(hafed.config, "in_dim", -1))
        if in_dim != self.dim:
            raise ValueError(
                f"hafed has in_dim={in_dim} but encoder {self.encoder.name!r} gives {self.dim}-d features; "
                f"use a HAFED (and TSU) trained on this encoder's features"
            )
        self.hafed = hafed
        self.lr_mag, self.hr_mag = float(spec.lr_mag), float(spec.hr_mag)
        self.patch_size, self.min_tissue = int(spec.patch_size), float(spec.min_tissue)
        self.tissue_kwargs = dict(spec.tissue_kwargs or {})
        self.cache_dir = None if spec.cache_dir is None else Path(spec.cache_dir)
        self.batch_size = int(spec.batch_size)
        self.remember_zooms = bool(spec.remember_zooms)
        self.memory_slides = max(1, int(spec.memory_slides))
        self.progress = progress
        self.fingerprint = encoder_fingerprint(self.encoder)
        items = resolve_slides(slides)
        self.slide_ids: list[str] = [p.stem for p, _ in items]
        label_list, self.class_names = resolve_labels(labels, self.slide_ids, spec.class_names)
        num_classes = getattr(hafed.config, "num_classes", len(self.class_names))
        if num_classes != len(self.class_names):
            raise ValueError(
                f"hafed has {num_classes} classes but the labels have {len(self.class_names)}: "
                f"{list(self.class_names)}"
            )
        truth = dict(spec.truth or {})
        unknown = sorted(set(truth) - set(self.slide_ids))
        if unknown:
            raise ValueError(f"truth= names slide(s) {unknown} that are not among the slides")
        self.slides: list[LiveSlide] = []
        for (path, synthetic), label in tqdm(
            list(zip(items, label_list, strict=True)), desc="WSIZoom live: plan", disable=not progress
        ):
            m = spec.mpp.get(path.stem) if isinstance(spec.mpp, Mapping) else spec.mpp
            self.slides.append(self._plan(path, m, label, synthetic, truth.get(path.stem)))
        n = np.array([s.plan.n for s in self.slides], dtype=np.int64)
        self.n_list: list[int] = n.tolist()
        self.max_n = int(n.max())
        self.labels = torch.as_tensor(label_list, dtype=torch.long, device=self.device)
        self.has_truth: list[bool] = [bool(np.isfinite(s.tumour).all()) for s in self.slides]
        self._z: OrderedDict[int, Tensor] = OrderedDict()
        self._v: dict[tuple[int, int], Tensor] = {}
        self._thumb: tuple[int, int, np.ndarray, float] | None = None  # (slide, max_size, image, ds)
        #: counts of the work done: low-res / high-res patches encoded, Z read from the disk cache, zooms
        self.counters = {"lr_encoded": 0, "hr_encoded": 0, "z_from_cache": 0, "zooms": 0}

    # ------------------------------------------------------------------ construction
    def _paths(self, slide_id: str) -> dict[str, Path]:
        assert self.cache_dir is not None
        return output_paths(
            self.cache_dir, slide_id, self.encoder.name, self.lr_mag, self.hr_mag, self.patch_size
        )

    def _plan(
        self,
        path: Path,
        mpp: float | None,
        label: int,
        synthetic: SyntheticSlide | None,
        truth: TruthSpec | None,
    ) -> LiveSlide:
        reader = SlideReader(path, mpp=mpp)
        try:
            reader.open()
            _ = reader.base_magnification  # DataError "pass mpp=" when the slide has no mpp
            plan = None
            if self.cache_dir is not None:
                paths = self._paths(reader.name)
                if all(is_complete(paths[f"{t}_patches"], features=False) for t in ("lr", "hr")):
                    plan = read_plan(paths["lr_patches"], paths["hr_patches"])
                    if plan.dimensions != reader.dimensions:
                        plan = None  # another slide under the same name: plan again
            if plan is None:
                tissue = segment_tissue(reader, **self.tissue_kwargs)
                plan = plan_patches(
                    reader,
                    tissue,
                    lr_mag=self.lr_mag,
                    hr_mag=self.hr_mag,
                    patch_size=self.patch_size,
                    min_tissue=self.min_tissue,
                )
                if plan.n == 0:
                    raise DataError(
                        path,
                        f"no {self.patch_size} px patch at {self.lr_mag:g}x has tissue fraction >= "
                        f"{self.min_tissue} (tissue covers {tissue.tissue_fraction_total:.1%} of the slide); "
                        "lower min_tissue or lr_mag",
                    )
                if self.cache_dir is not None:
                    for t in ("lr", "hr"):
                        write_h5(self._paths(reader.name)[f"{t}_patches"], plan, t, reader.name, reader.mpp)
        finally:
            reader.close()
        tumour = np.full(plan.n, np.nan, dtype=np.float32)
        if truth is None and synthetic is not None:
            tumour = tumour_fraction(
                synthetic.tumour_regions,
                plan.coords,
                plan.patch_size_level0,
                synthetic.width,
                synthetic.height,
            )
        elif callable(truth):
            tumour = np.asarray(truth(plan.coords.copy(), plan.patch_size_level0), dtype=np.float32)
        elif truth is not None:
            tumour = np.asarray(truth, dtype=np.float32)
        if tumour.shape != (plan.n,):
            raise ValueError(
                f"truth for slide {path.stem!r} must give {plan.n} tumour fractions (one per low-res "
                f"patch), got shape {tumour.shape}"
            )
        return LiveSlide(
            slide_id=path.stem,
            reader=reader,
            plan=plan,
            label=int(label),
            tumour=tumour.astype(np.float32),
            coords=normalised_coords(plan.coords),
            cells=grid_cells(plan.coords, plan.patch_size_level0),
        )

    # ------------------------------------------------------------------ engine interface
    def __len__(self) -> int:
        return len(self.slides)

    def describe(self) -> str:
        """``"the live slides [ids]"`` (:class:`~wsigym.envs.slide_source.SlideIndex`; ids are file stems)."""
        return f"the live slides {self.slide_ids}"

    def plan(self, index: int) -> PatchPlan:
        """The patch plan of slide ``index``."""
        return self.slides[index].plan

    def features(self, index: int) -> Tensor:
        """``Z (N, d)`` float32 of slide ``index``: memory, else the disk cache, else the encoder."""
        z = self._z.get(index)
        if z is not None:
            self._z.move_to_end(index)
            return z
        s = self.slides[index]
        arr = None
        tag = f"{self.encoder.name}@{self.fingerprint}"
        if self.cache_dir is not None:
            path = self._paths(s.slide_id)["lr_features"]
            if is_complete(path, features=True, encoder=tag):
                with h5py.File(path, "r") as f:
                    coords = f["coords"][:]
                    if np.array_equal(coords, s.plan.coords) and f["features"].shape[1] == self.dim:
                        arr = f["features"][:].astype(np.float32)
                        self.counters["z_from_cache"] += 1
        if arr is None:
            arr = encode_patches(s.reader, s.plan, "lr", self.encoder, self.batch_size, self.progress)
            self.counters["lr_encoded"] += s.plan.n
            if self.cache_dir is not None:
                write_h5(
                    self._paths(s.slide_id)["lr_features"],
                    s.plan,
                    "lr",
                    s.slide_id,
                    s.reader.mpp,
                    arr,
                    tag,
                )
        z = torch.as_tensor(arr, dtype=torch.float32, device=self.device)
        self._z[index] = z
        while len(self._z) > self.memory_slides:
            self._z.popitem(last=False)
        return z

    def episode_arrays(self, index: int) -> tuple[Tensor, np.ndarray, np.ndarray]:
        """``(Z (N, d) tensor, coords (N, 2) float32 normalised, tumour (N,) float32)`` of a new episode."""
        s = self.slides[index]
        return self.features(index), s.coords, s.tumour

    def cells(self, index: int) -> np.ndarray:
        """``int64 (N, 2)`` grid cells ``(col, row)`` of slide ``index``."""
        return self.slides[index].cells

    def read_children(self, index: int, patch: int) -> np.ndarray:
        """``uint8 (k, P, P, 3)``: the high-res children of low-res patch ``patch``, read from the slide."""
        s = self.slides[index]
        x, y = (int(v) for v in s.plan.coords[patch])
        return read_children(s.reader, (x, y), self.lr_mag, self.hr_mag, self.patch_size)

    def children_features(self, index: int, patch: int) -> np.ndarray:
        """``U_a (k, d)`` float32: the encoder on :meth:`read_children`."""
        return self._encode_images(self.read_children(index, patch))

    def _encode_images(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            f = np.asarray(self.encoder(chunk), dtype=np.float32)
            if f.shape != (len(chunk), self.dim):
                raise ValueError(
                    f"encoder {self.encoder.name!r} returned shape {f.shape}, expected ({len(chunk)}, {self.dim})"
                )
            out.append(f)
        self.counters["hr_encoded"] += len(images)
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def oracle(self, slides: np.ndarray, patches: np.ndarray) -> Tensor:
        """``V (m, d)`` for the zooms ``(slides[j], patches[j])``: read + encode the children, HAFED level 1.

        All ``m * k`` children go through the encoder together, then one ``hafed.aggregate``
        ``(m, k, d) -> (m, d)`` with the children's tissue mask.
        """
        slides = np.asarray(slides, dtype=np.int64).reshape(-1)
        patches = np.asarray(patches, dtype=np.int64).reshape(-1)
        self.counters["zooms"] += len(slides)
        out: list[Tensor | None] = [None] * len(slides)
        todo = []
        for j, (k, a) in enumerate(zip(slides.tolist(), patches.tolist(), strict=True)):
            hit = self._v.get((k, a)) if self.remember_zooms else None
            if hit is not None:
                out[j] = hit
            else:
                todo.append(j)
        if todo:
            images = np.concatenate([self.read_children(int(slides[j]), int(patches[j])) for j in todo])
            kk = self.slides[int(slides[todo[0]])].plan.k
            u = self._encode_images(images).reshape(len(todo), kk, self.dim)
            mask = np.stack([self.slides[int(slides[j])].plan.hr_mask[int(patches[j])] for j in todo])
            param = next(self.hafed.parameters())
            was_training = self.hafed.training
            self.hafed.eval()
            try:
                v = self.hafed.aggregate(
                    torch.as_tensor(u, device=param.device), torch.as_tensor(mask, device=param.device)
                )
            finally:
                self.hafed.train(was_training)
            v = v.float().to(self.device)
            for row, j in enumerate(todo):
                out[j] = v[row]
                if self.remember_zooms:
                    self._v[(int(slides[j]), int(patches[j]))] = v[row]
        return torch.stack([t for t in out if t is not None])

    # ------------------------------------------------------------------ rendering
    def thumbnail(self, index: int, max_size: int = 768) -> tuple[np.ndarray, float]:
        """``(uint8 (h, w, 3), ds)``: the slide read at ``ds = max(W, H) / max_size`` level-0 px per px."""
        if self._thumb is not None and self._thumb[:2] == (index, max_size):
            return self._thumb[2], self._thumb[3]
        reader = self.slides[index].reader
        w0, h0 = reader.dimensions
        ds = max(1.0, max(w0, h0) / max_size)
        img = reader.read_downsampled(ds)
        self._thumb = (index, max_size, img, ds)
        return img, ds

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_thumb"] = None
        return state
