"""Slide -> tissue -> patch grid -> features, written in the TRIDENT layout.

For each slide and each of the two magnifications (``lr_mag``, ``hr_mag``)::

    job_dir/{mag}x_{P}px_0px_overlap/patches/<slide>_patches.h5
    job_dir/{mag}x_{P}px_0px_overlap/features_<encoder.name>/<slide>.h5

Both files hold ``coords`` (``int64 (M, 2)``, level-0 top-left) with the TRIDENT attributes
``patch_size`` (px at the target magnification), ``patch_size_level0``, ``level0_magnification``,
``target_magnification``, ``overlap`` (0), ``name`` (slide id), ``savetodir``, ``level0_width``,
``level0_height``; feature files add ``features`` (``float32 (M, d)``, attributes ``name``, ``encoder``,
``savetodir``). At ``lr_mag`` the rows are the kept low-res tissue patches (``M = N``). At ``hr_mag`` the
rows are ONLY the children of those patches (the SASHA way): all ``k = (hr/lr)^2`` children of each
parent, parent-major and row-major inside a parent (``M = N * k``), so ``reshape(N, k, ...)`` recovers
``U``. Extra datasets (ignored by TRIDENT readers): ``tissue_fraction`` ``(M,)``, and at ``hr_mag``
``parent_index`` ``(M,)`` and ``tissue_mask`` ``(M,)`` bool (-> ``hr_mask``). Root attributes:
``wsigym_complete = 1``, ``lr_magnification``, ``hr_magnification``, ``children_per_side``, ``mpp``.

Writes go to a temp file in the same folder and are renamed, so a file that exists is complete;
a slide whose four files exist (and match the encoder) is skipped unless ``overwrite=True``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.errors import DataError
from wsigym.slides.encoders import PatchEncoder
from wsigym.slides.grid import PatchPlan, plan_patches
from wsigym.slides.reader import SlideReader, open_slide, read_children, read_patch
from wsigym.slides.tissue import segment_tissue

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
)


def mag_dir_name(mag: float, patch_size: int, overlap: int = 0) -> str:
    """TRIDENT folder name: ``5x_256px_0px_overlap`` (``2.5x_...`` for fractional magnifications)."""
    return f"{float(mag):g}x_{int(patch_size)}px_{int(overlap)}px_overlap"


def output_paths(
    job_dir: str | os.PathLike[str],
    slide_name: str,
    encoder_name: str,
    lr_mag: float,
    hr_mag: float,
    patch_size: int,
) -> dict[str, Path]:
    """``{"lr_patches", "hr_patches", "lr_features", "hr_features"}`` paths of one slide."""
    job = Path(job_dir)
    out = {}
    for tag, mag in (("lr", lr_mag), ("hr", hr_mag)):
        d = job / mag_dir_name(mag, patch_size)
        out[f"{tag}_patches"] = d / "patches" / f"{slide_name}_patches.h5"
        out[f"{tag}_features"] = d / f"features_{encoder_name}" / f"{slide_name}.h5"
    return out


def _is_complete(path: Path, *, features: bool, encoder: str | None = None) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("wsigym_complete", 0)) != 1 or "coords" not in f:
                return False
            if features:
                if "features" not in f or f["features"].shape[0] != f["coords"].shape[0]:
                    return False
                if encoder is not None and f["features"].attrs.get("encoder") != encoder:
                    return False
        return True
    except Exception:
        return False


def _coords_attrs(plan: PatchPlan, tag: str, slide_name: str, savetodir: Path) -> dict[str, Any]:
    hr = tag == "hr"
    return {
        "patch_size": plan.patch_size,
        "patch_size_level0": plan.hr_patch_size_level0 if hr else plan.patch_size_level0,
        "level0_magnification": plan.base_magnification,
        "target_magnification": plan.hr_magnification if hr else plan.lr_magnification,
        "overlap": 0,
        "name": slide_name,
        "savetodir": str(savetodir),
        "level0_width": plan.dimensions[0],
        "level0_height": plan.dimensions[1],
    }


def _plan_rows(plan: PatchPlan, tag: str) -> dict[str, np.ndarray]:
    if tag == "lr":
        return {"coords": plan.coords, "tissue_fraction": plan.tissue_fraction}
    n, k = plan.hr_mask.shape
    return {
        "coords": plan.hr_coords.reshape(n * k, 2),
        "tissue_fraction": plan.hr_tissue_fraction.reshape(n * k),
        "tissue_mask": plan.hr_mask.reshape(n * k),
        "parent_index": np.repeat(np.arange(n, dtype=np.int64), k),
    }


def _write_h5(
    path: Path,
    plan: PatchPlan,
    tag: str,
    slide_name: str,
    mpp: float | None,
    features: np.ndarray | None = None,
    encoder_name: str | None = None,
) -> None:
    """Atomic write of a patches file (``features is None``) or a features file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            rows = _plan_rows(plan, tag)
            ds = f.create_dataset("coords", data=rows.pop("coords").astype(np.int64))
            for key, value in _coords_attrs(plan, tag, slide_name, path.parent).items():
                ds.attrs[key] = value
            for key, value in rows.items():
                f.create_dataset(key, data=value)
            if features is not None:
                fd = f.create_dataset("features", data=features.astype(np.float32))
                fd.attrs["name"] = slide_name
                fd.attrs["encoder"] = encoder_name or "unknown"
                fd.attrs["savetodir"] = str(path.parent)
            f.attrs["lr_magnification"] = plan.lr_magnification
            f.attrs["hr_magnification"] = plan.hr_magnification
            f.attrs["children_per_side"] = plan.children_per_side
            f.attrs["mpp"] = float("nan") if mpp is None else float(mpp)
            f.attrs["wsigym_complete"] = 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_plan(lr_path: Path, hr_path: Path) -> PatchPlan:
    """Rebuild a :class:`PatchPlan` from the two patches files."""
    with h5py.File(lr_path, "r") as f:
        coords = f["coords"][:].astype(np.int64)
        a = dict(f["coords"].attrs)
        frac = f["tissue_fraction"][:].astype(np.float32)
    with h5py.File(hr_path, "r") as f:
        hr = f["coords"][:].astype(np.int64)
        ha = dict(f["coords"].attrs)
        hfrac = f["tissue_fraction"][:].astype(np.float32)
        hmask = f["tissue_mask"][:].astype(bool)
    n = coords.shape[0]
    k = hr.shape[0] // max(1, n)
    return PatchPlan(
        coords=coords,
        tissue_fraction=frac,
        hr_coords=hr.reshape(n, k, 2),
        hr_tissue_fraction=hfrac.reshape(n, k),
        hr_mask=hmask.reshape(n, k),
        patch_size=int(a["patch_size"]),
        patch_size_level0=int(a["patch_size_level0"]),
        hr_patch_size_level0=int(ha["patch_size_level0"]),
        lr_magnification=float(a["target_magnification"]),
        hr_magnification=float(ha["target_magnification"]),
        base_magnification=float(a["level0_magnification"]),
        dimensions=(int(a["level0_width"]), int(a["level0_height"])),
    )


def _batched_images(slide: SlideReader, plan: PatchPlan, tag: str, batch_size: int) -> Iterator[np.ndarray]:
    """``uint8 (B, P, P, 3)`` batches in file-row order (children read one parent at a time)."""
    buf: list[np.ndarray] = []
    count = 0
    for coord in plan.coords:
        if tag == "lr":
            imgs = read_patch(slide, tuple(coord), plan.lr_magnification, plan.patch_size)[None]
        else:
            imgs = read_children(
                slide, tuple(coord), plan.lr_magnification, plan.hr_magnification, plan.patch_size
            )
        buf.append(imgs)
        count += len(imgs)
        while count >= batch_size:
            stacked = np.concatenate(buf, axis=0)
            yield stacked[:batch_size]
            rest = stacked[batch_size:]
            buf, count = ([rest] if len(rest) else []), len(rest)
    if count:
        yield np.concatenate(buf, axis=0)


def _encode(
    slide: SlideReader, plan: PatchPlan, tag: str, encoder: PatchEncoder, batch_size: int, progress: bool
) -> np.ndarray:
    total = plan.n * (plan.k if tag == "hr" else 1)
    out = np.empty((total, encoder.dim), dtype=np.float32)
    i = 0
    mag = plan.hr_magnification if tag == "hr" else plan.lr_magnification
    with tqdm(
        total=total, disable=not progress, desc=f"{slide.name} {mag:g}x", unit="patch", leave=False
    ) as bar:
        for batch in _batched_images(slide, plan, tag, batch_size):
            feats = np.asarray(encoder(batch), dtype=np.float32)
            if feats.shape != (len(batch), encoder.dim):
                raise ValueError(
                    f"encoder {encoder.name!r} returned shape {feats.shape}, expected ({len(batch)}, {encoder.dim})"
                )
            if not np.isfinite(feats).all():
                raise ValueError(f"encoder {encoder.name!r} returned NaN/inf features for {slide.path}")
            out[i : i + len(batch)] = feats
            i += len(batch)
            bar.update(len(batch))
    return out


def extract_features(
    slide_path: str | os.PathLike[str] | SlideReader,
    job_dir: str | os.PathLike[str],
    encoder: PatchEncoder,
    *,
    lr_mag: float = 5.0,
    hr_mag: float = 20.0,
    patch_size: int = 256,
    batch_size: int = 32,
    mpp: float | None = None,
    min_tissue: float = 0.25,
    tissue_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Segment, patch and encode one slide at ``lr_mag`` and (children only) ``hr_mag``.

    Args:
        slide_path: slide file (or an open :class:`SlideReader`).
        job_dir: TRIDENT job folder.
        encoder: a :class:`~wsigym.slides.encoders.PatchEncoder`; its ``name`` names the feature folder.
        lr_mag, hr_mag: target magnifications (``hr_mag / lr_mag`` a whole number).
        patch_size: patch side in px at both magnifications.
        batch_size: images per encoder call.
        mpp: microns per level-0 px, overriding (or supplying) the file's value.
        min_tissue: keep a low-res patch / flag a child valid when its tissue fraction is at least this.
        tissue_kwargs: forwarded to :func:`~wsigym.slides.tissue.segment_tissue`.
        progress: tqdm bars.
        overwrite: recompute even when complete files exist.

    Returns:
        ``{"lr_patches", "hr_patches", "lr_features", "hr_features"}`` -> paths.

    Raises:
        DataError: unreadable slide, missing mpp, or no tissue patch at all.
    """
    slide = open_slide(slide_path, mpp=mpp)
    paths = output_paths(job_dir, slide.name, encoder.name, lr_mag, hr_mag, patch_size)
    patches_done = not overwrite and all(
        _is_complete(paths[f"{t}_patches"], features=False) for t in ("lr", "hr")
    )
    feats_done = {
        t: not overwrite and _is_complete(paths[f"{t}_features"], features=True, encoder=encoder.name)
        for t in ("lr", "hr")
    }
    if patches_done and all(feats_done.values()):
        return paths
    if patches_done:
        plan = _read_plan(paths["lr_patches"], paths["hr_patches"])
    else:
        tissue = segment_tissue(slide, **dict(tissue_kwargs or {}))
        plan = plan_patches(
            slide, tissue, lr_mag=lr_mag, hr_mag=hr_mag, patch_size=patch_size, min_tissue=min_tissue
        )
        if plan.n == 0:
            raise DataError(
                slide.path,
                f"no {patch_size} px patch at {lr_mag:g}x has tissue fraction >= {min_tissue} "
                f"(tissue covers {tissue.tissue_fraction_total:.1%} of the slide); lower min_tissue or lr_mag",
            )
        for t in ("lr", "hr"):
            _write_h5(paths[f"{t}_patches"], plan, t, slide.name, slide.mpp)
    for t in ("lr", "hr"):
        if feats_done[t] and patches_done:
            continue
        feats = _encode(slide, plan, t, encoder, batch_size, progress)
        _write_h5(paths[f"{t}_features"], plan, t, slide.name, slide.mpp, feats, encoder.name)
    return paths


def list_slides(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """A folder (its files with a slide suffix, sorted) or an iterable of paths."""
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.is_dir():
            return sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SLIDE_SUFFIXES)
        return [p]
    return [Path(q) for q in source]


def extract_folder(
    slides: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    job_dir: str | os.PathLike[str],
    encoder: PatchEncoder,
    *,
    mpp: float | Mapping[str, float] | None = None,
    on_error: str = "raise",
    progress: bool = True,
    **kwargs: Any,
) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """:func:`extract_features` over a folder or list of slides.

    Args:
        mpp: one override for all slides, or ``{slide_id: mpp}`` for some.
        on_error: ``"raise"`` stops at the first bad slide; ``"skip"`` records it and goes on.
        **kwargs: forwarded to :func:`extract_features`.

    Returns:
        ``(done, failed)``: ``{slide_id: paths}`` and ``{slide_id: error message}``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    done: dict[str, dict[str, Path]] = {}
    failed: dict[str, str] = {}
    paths = list_slides(slides)
    for p in tqdm(paths, disable=not progress, desc="slides", unit="slide"):
        m = mpp.get(p.stem) if isinstance(mpp, Mapping) else mpp
        try:
            done[p.stem] = extract_features(p, job_dir, encoder, mpp=m, progress=progress, **kwargs)
        except (DataError, ValueError) as e:
            if on_error == "raise":
                raise
            failed[p.stem] = str(e)
    return done, failed


def read_slide_bag(
    job_dir: str | os.PathLike[str],
    slide_name: str,
    encoder_name: str,
    *,
    lr_mag: float = 5.0,
    hr_mag: float = 20.0,
    patch_size: int = 256,
    label: int = 0,
    class_names: Sequence[str] = ("negative", "positive"),
) -> SlideBag:
    """Read one slide's files back as a validated :class:`~wsigym.data.bag.SlideBag`.

    ``hr_features`` is the high-res file's ``features`` reshaped to ``(N, k, d)``; ``hr_mask`` its
    ``tissue_mask`` (children not on tissue are False).
    """
    paths = output_paths(job_dir, slide_name, encoder_name, lr_mag, hr_mag, patch_size)
    src = paths["lr_features"]
    for key in ("lr_features", "hr_features"):
        if not _is_complete(paths[key], features=True):
            raise DataError(paths[key], "missing or incomplete feature file (run extract_features first)")
    with h5py.File(paths["lr_features"], "r") as f:
        z = f["features"][:].astype(np.float32)
        coords = f["coords"][:].astype(np.int64)
        a = dict(f["coords"].attrs)
        mpp = float(f.attrs.get("mpp", float("nan")))
    with h5py.File(paths["hr_features"], "r") as f:
        u = f["features"][:].astype(np.float32)
        hr = f["coords"][:].astype(np.int64)
        ha = dict(f["coords"].attrs)
        hmask = f["tissue_mask"][:].astype(bool)
        parent = f["parent_index"][:]
    n, d = z.shape
    if n == 0 or u.shape[0] % n:
        raise DataError(paths["hr_features"], f"{u.shape[0]} high-res rows are not k per each of {n} patches")
    k = u.shape[0] // n
    if not np.array_equal(parent, np.repeat(np.arange(n), k)):
        raise DataError(paths["hr_features"], "rows are not parent-major (parent_index)")
    meta = SlideMeta(
        lr_magnification=float(a["target_magnification"]),
        hr_magnification=float(ha["target_magnification"]),
        patch_size_level0=int(a["patch_size_level0"]),
        hr_patch_size_level0=int(ha["patch_size_level0"]),
        mpp=None if not np.isfinite(mpp) else mpp,
        encoder=encoder_name,
        extra={"level0_magnification": float(a["level0_magnification"]), "patch_size": int(a["patch_size"])},
    )
    bag = SlideBag(
        slide_id=slide_name,
        features=z,
        coords=coords,
        label=int(label),
        class_names=tuple(class_names),
        hr_features=u.reshape(n, k, d),
        hr_mask=hmask.reshape(n, k),
        hr_coords=hr.reshape(n, k, 2),
        meta=meta,
    )
    return bag.validate(str(src))
