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

Writes go to a temp file in the same folder and are renamed, so a file that exists is complete (temp
files left by a killed run are removed on the next one); a slide whose four files exist (and match the
encoder) is skipped unless ``overwrite=True``.

Encoder identity: every features file records, in the ``features`` attributes ``encoder_identity``
(JSON) and ``encoder_sha256``, which network made it (:func:`encoder_identity`: name, feature width,
SHA-256 of the weights as loaded, preprocessing, and where the weights came from), and each
``features_<encoder>/`` folder holds the same record as ``encoder.json``. Resuming a job with another
network under the same name (other weights, another random initialisation, other preprocessing) is
refused with :class:`EncoderMismatchError` unless ``overwrite=True``; :func:`read_slide_bag` refuses a
features file whose identity differs from its folder's.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.errors import DataError
from wsigym.io import atomic_write, atomic_write_json, temp_writer_pid
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


IDENTITY_FILE = "encoder.json"
#: Fields of an identity that must agree for two feature files to come from the same network
#: (``weights`` only says where the weights came from).
_IDENTITY_KEYS = ("name", "dim", "weights_sha256", "preprocessing")


class EncoderMismatchError(DataError):
    """A job folder's features were made by another network than the one given now."""


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over the module's state_dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoder_identity(encoder: PatchEncoder, weights: str | None = None) -> dict[str, Any]:
    """What identifies the network that makes the features: ``{"name", "dim", "weights_sha256",
    "preprocessing", "weights"}``.

    ``weights_sha256`` is :func:`weights_digest` of ``encoder.module`` (a
    :class:`~wsigym.slides.encoders.TorchPatchEncoder`), so two random initialisations or two weights
    files differ even under one name; an encoder without a ``module`` may give its own ``identity``
    mapping (merged in), else the digest is None (unknown). ``preprocessing`` holds ``input_size``,
    ``mean``, ``std`` and the resize rule. ``weights`` describes where the weights came from (a file, a
    Hub id, ``"random initialisation (torch seed 0)"``) and is recorded, not compared.
    """
    module = getattr(encoder, "module", None)
    identity: dict[str, Any] = {
        "name": str(encoder.name),
        "dim": int(encoder.dim),
        "weights_sha256": weights_digest(module) if isinstance(module, torch.nn.Module) else None,
        "preprocessing": {
            "input_size": int(encoder.input_size),
            "mean": [float(m) for m in encoder.mean],
            "std": [float(s) for s in encoder.std],
            "resize": "bilinear, antialiased, to input_size x input_size; [0, 1] then (x - mean) / std",
        },
        "weights": weights,
    }
    own = getattr(encoder, "identity", None)
    if isinstance(own, Mapping):
        identity.update(own)
    return json.loads(json.dumps(identity))  # plain JSON types


def _same_network(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _IDENTITY_KEYS)


def _differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    parts = []
    for key in _IDENTITY_KEYS:
        if recorded.get(key) != now.get(key):
            parts.append(f"{key} {recorded.get(key)!r} there, {now.get(key)!r} now")
    return "; ".join(parts)


def _read_identity_file(path: Path) -> dict[str, Any]:
    try:
        identity = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            path, f"unreadable encoder record ({e}); delete it and rerun with --overwrite"
        ) from None
    if not isinstance(identity, dict):
        raise DataError(path, "expected a JSON object (the encoder identity); rerun with --overwrite")
    return identity


def check_job_encoder(features_dir: Path, identity: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Refuse to add features of ``identity`` to ``features_dir`` when its ``encoder.json`` names another
    network, or when it holds feature files but no record (written before identities were recorded);
    with ``overwrite`` (or a new folder) record ``identity`` there.

    Raises:
        EncoderMismatchError: naming the folder, what differs and what to do.
    """
    record = features_dir / IDENTITY_FILE
    if not overwrite:
        if record.is_file():
            recorded = _read_identity_file(record)
            if _same_network(recorded, identity):
                return
            raise EncoderMismatchError(
                features_dir,
                f"holds features of another network under the name {identity['name']!r} "
                f"({_differences(recorded, identity)}); resuming would mix two encoders in one job. "
                "Rerun with --overwrite (overwrite=True) to recompute, or use another --job-dir",
            )
        if features_dir.is_dir() and any(features_dir.glob("*.h5")):
            raise EncoderMismatchError(
                features_dir,
                f"holds features but no {IDENTITY_FILE} (written before wsigym recorded the encoder), so "
                "the network that made them is unknown. Rerun with --overwrite (overwrite=True) to "
                "recompute, or use another --job-dir",
            )
    features_dir.mkdir(parents=True, exist_ok=True)
    if not record.is_file() or _read_identity_file(record) != dict(identity):
        atomic_write_json(record, dict(identity))


def _file_identity(path: Path) -> dict[str, Any] | None:
    try:
        with h5py.File(path, "r") as f:
            text = f["features"].attrs.get("encoder_identity") if "features" in f else None
        return json.loads(text) if isinstance(text, str | bytes) else None
    except (OSError, KeyError, ValueError):
        return None


def _remove_stale_temps(path: Path) -> None:
    """Delete the temp files of ``path`` (:func:`wsigym.io.temp_name`) whose writer process is gone
    (``kill -9``)."""
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = temp_writer_pid(tmp, path.name)
        if pid is None:
            continue  # not ours
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except (PermissionError, OverflowError):
            continue  # another user's live process, or not a pid
        if not alive:
            tmp.unlink(missing_ok=True)


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


def is_complete(
    path: Path, *, features: bool, encoder: str | None = None, identity: Mapping[str, Any] | None = None
) -> bool:
    """True when ``path`` is a patches file (``features=False``) or features file written whole by
    :func:`write_h5`: marked complete, with coordinates (and as many feature rows), made by ``encoder``
    (its ``encoder`` attribute) and by the network of ``identity`` when given. Unreadable files are not."""
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
        if identity is not None:
            found = _file_identity(path)
            return found is not None and _same_network(found, identity)
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


def write_h5(
    path: Path,
    plan: PatchPlan,
    tag: str,
    slide_name: str,
    mpp: float | None,
    features: np.ndarray | None = None,
    encoder_name: str | None = None,
    identity: Mapping[str, Any] | None = None,
) -> None:
    """Atomic write of a patches file (``features is None``) or a features file."""

    def write(tmp: Path) -> None:
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
                if identity is not None:
                    fd.attrs["encoder_identity"] = json.dumps(dict(identity), sort_keys=True)
                    fd.attrs["encoder_sha256"] = str(identity.get("weights_sha256"))
            f.attrs["lr_magnification"] = plan.lr_magnification
            f.attrs["hr_magnification"] = plan.hr_magnification
            f.attrs["children_per_side"] = plan.children_per_side
            f.attrs["mpp"] = float("nan") if mpp is None else float(mpp)
            f.attrs["wsigym_complete"] = 1

    atomic_write(path, write)


def read_plan(lr_path: Path, hr_path: Path) -> PatchPlan:
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


def encode_patches(
    slide: SlideReader, plan: PatchPlan, tag: str, encoder: PatchEncoder, batch_size: int, progress: bool
) -> np.ndarray:
    """Features of every patch of ``plan`` at ``tag`` (``"lr"``: ``(N, d)``; ``"hr"``: the children,
    ``(N * k, d)`` in plan order), read from ``slide`` and encoded ``batch_size`` patches at a time.

    Raises:
        ValueError: the encoder returned another shape or NaN/inf features.
    """
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
    identity: Mapping[str, Any] | None = None,
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
        overwrite: recompute even when complete files exist (and record this encoder in the job folder
            even when another one was recorded there).
        identity: :func:`encoder_identity` of ``encoder`` (computed when None; pass it to hash the
            weights once for many slides).

    Returns:
        ``{"lr_patches", "hr_patches", "lr_features", "hr_features"}`` -> paths.

    Raises:
        EncoderMismatchError: the job folder holds features of another network under this name.
        DataError: unreadable slide, missing mpp, or no tissue patch at all.
    """
    identity = dict(identity) if identity is not None else encoder_identity(encoder)
    slide = open_slide(slide_path, mpp=mpp)
    paths = output_paths(job_dir, slide.name, encoder.name, lr_mag, hr_mag, patch_size)
    for t in ("lr", "hr"):
        check_job_encoder(paths[f"{t}_features"].parent, identity, overwrite=overwrite)
    for path in paths.values():
        _remove_stale_temps(path)
    patches_done = not overwrite and all(
        is_complete(paths[f"{t}_patches"], features=False) for t in ("lr", "hr")
    )
    feats_done = {
        t: not overwrite
        and is_complete(paths[f"{t}_features"], features=True, encoder=encoder.name, identity=identity)
        for t in ("lr", "hr")
    }
    if patches_done and all(feats_done.values()):
        return paths
    if patches_done:
        plan = read_plan(paths["lr_patches"], paths["hr_patches"])
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
            write_h5(paths[f"{t}_patches"], plan, t, slide.name, slide.mpp)
    for t in ("lr", "hr"):
        if feats_done[t] and patches_done:
            continue
        feats = encode_patches(slide, plan, t, encoder, batch_size, progress)
        write_h5(paths[f"{t}_features"], plan, t, slide.name, slide.mpp, feats, encoder.name, identity)
    return paths


def list_slides(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """A folder (its files with a slide suffix, sorted) or an iterable of paths."""
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.is_dir():
            return sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SLIDE_SUFFIXES)
        return [p]
    return [Path(q) for q in source]


def prepare_job(
    job_dir: str | os.PathLike[str],
    encoder: PatchEncoder,
    identity: Mapping[str, Any] | None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Check (and record) the encoder of a job folder once, before any slide is read; return its identity.

    ``kwargs`` are :func:`extract_features`'s (``lr_mag``, ``hr_mag``, ``patch_size``, ``overwrite``
    are read). Shared by every backend of :func:`extract_folder`.

    Raises:
        EncoderMismatchError: the job folder holds features of another network under this name.
    """
    identity = dict(identity) if identity is not None else encoder_identity(encoder)
    defaults = inspect.signature(extract_features).parameters
    geometry = {k: kwargs.get(k, defaults[k].default) for k in ("lr_mag", "hr_mag", "patch_size")}
    for key in ("lr_features", "hr_features"):
        features_dir = output_paths(job_dir, "_", encoder.name, **geometry)[key].parent
        check_job_encoder(features_dir, identity, overwrite=bool(kwargs.get("overwrite", False)))
    return identity


def slide_mpp(path: Path, mpp: float | Mapping[str, float] | None) -> float | None:
    """The mpp override of one slide: ``mpp`` itself, or ``mpp[slide_id]`` from a mapping."""
    return mpp.get(path.stem) if isinstance(mpp, Mapping) else mpp


def extract_or_report(
    path: Path, job_dir: str | os.PathLike[str], encoder: PatchEncoder, *, on_error: str, **kwargs: Any
) -> tuple[dict[str, Path] | None, str | None]:
    """:func:`extract_features` of one slide: ``(paths, None)``, or with ``on_error="skip"``
    ``(None, message)`` for a bad slide (:class:`DataError`, ``ValueError``); an
    :class:`EncoderMismatchError` is always raised. One slide of :func:`extract_folder`, whatever the backend.
    """
    try:
        return extract_features(path, job_dir, encoder, **kwargs), None
    except EncoderMismatchError:
        raise
    except (DataError, ValueError) as e:
        if on_error == "raise":
            raise
        return None, str(e)


def extract_folder(
    slides: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    job_dir: str | os.PathLike[str],
    encoder: PatchEncoder,
    *,
    mpp: float | Mapping[str, float] | None = None,
    on_error: str = "raise",
    progress: bool = True,
    identity: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """:func:`extract_features` over a folder or list of slides, one after another in this process
    (:func:`wsigym.distributed.extraction.extract_folder_ray` runs them on a pool of Ray actors).

    Args:
        mpp: one override for all slides, or ``{slide_id: mpp}`` for some.
        on_error: ``"raise"`` stops at the first bad slide; ``"skip"`` records it and goes on (an
            :class:`EncoderMismatchError` always stops, before any slide is read).
        identity: :func:`encoder_identity` of ``encoder`` (computed once when None).
        **kwargs: forwarded to :func:`extract_features`.

    Returns:
        ``(done, failed)``: ``{slide_id: paths}`` and ``{slide_id: error message}``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    identity = prepare_job(job_dir, encoder, identity, **kwargs)
    done: dict[str, dict[str, Path]] = {}
    failed: dict[str, str] = {}
    for p in tqdm(list_slides(slides), disable=not progress, desc="slides", unit="slide"):
        paths, error = extract_or_report(
            p,
            job_dir,
            encoder,
            on_error=on_error,
            mpp=slide_mpp(p, mpp),
            progress=progress,
            identity=identity,
            **kwargs,
        )
        if error is None:
            done[p.stem] = paths
        else:
            failed[p.stem] = error
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
        if not is_complete(paths[key], features=True):
            raise DataError(paths[key], "missing or incomplete feature file (run extract_features first)")
        record = paths[key].parent / IDENTITY_FILE
        if record.is_file():
            recorded, found = _read_identity_file(record), _file_identity(paths[key])
            if found is None or not _same_network(recorded, found):
                raise EncoderMismatchError(
                    paths[key],
                    f"made by another network than the one {record} records"
                    + (f" ({_differences(recorded, found)})" if found else " (no identity recorded)")
                    + "; re-extract this slide with --overwrite",
                )
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
