"""``wsigym slides extract --backend ray``: one Ray task per slide.

The job folder's encoder is checked and recorded once, here, before any task starts (as the local
backend does, :func:`wsigym.slides.extract.prepare_job`); the encoder goes into Ray's object store once
(``ray.put``) and every task reads it from there. A task runs
:func:`wsigym.slides.extract.extract_or_report` on its slide, so everything the local backend does holds
per slide: a slide whose files are complete is skipped (a killed job resumes where it stopped: files are
written to a temp file and renamed), and with ``on_error="skip"`` a bad slide returns its one-line error
while the others go on. ``job_dir`` must be one folder that every node of the cluster sees (a shared
filesystem); on one machine that is any folder.

GPUs: with ``device="cuda"`` each task asks Ray for one GPU (``num_gpus=1``), so a node with G GPUs runs
G slides at a time; the encoder is moved to the task's GPU inside the task.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wsigym.distributed.cluster import connect, gpus_per_task
from wsigym.distributed.gather import gather
from wsigym.slides.encoders import PatchEncoder
from wsigym.slides.extract import extract_or_report, list_slides, prepare_job, slide_mpp


def _extract_task(
    path: Path,
    job_dir: str,
    encoder: PatchEncoder,
    device: str | None,
    threads: int,
    on_error: str,
    kwargs: dict[str, Any],
) -> tuple[dict[str, Path] | None, str | None]:
    """One slide in a Ray worker (``encoder`` arrives from the object store)."""
    import torch

    torch.set_num_threads(threads)
    if device is not None and hasattr(encoder, "to"):
        encoder = encoder.to(device)
    return extract_or_report(path, job_dir, encoder, on_error=on_error, progress=False, **kwargs)


def extract_folder_ray(
    slides: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    job_dir: str | os.PathLike[str],
    encoder: PatchEncoder,
    *,
    mpp: float | Mapping[str, float] | None = None,
    on_error: str = "raise",
    progress: bool = True,
    identity: Mapping[str, Any] | None = None,
    device: str | None = None,
    cpus_per_task: float = 1.0,
    address: str | None = None,
    **kwargs: Any,
) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """:func:`wsigym.slides.extract.extract_folder` with one Ray task per slide (same arguments, same
    files and return value).

    Args:
        device: where each task runs the encoder (``"cuda"`` asks Ray for one GPU per task; None: the
            encoder's own device, which must then exist on every node).
        cpus_per_task: CPU cores a task reserves (and its torch threads).
        address: the cluster (:func:`wsigym.distributed.cluster.connect`; ignored when already connected).

    Returns:
        ``(done, failed)``: ``{slide_id: paths}`` and ``{slide_id: error message}``, in slide order.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    identity = prepare_job(job_dir, encoder, identity, **kwargs)
    ray = connect(address)
    paths = list_slides(slides)
    gpus = gpus_per_task(device if device is not None else str(getattr(encoder, "device", "cpu")))
    task = ray.remote(_extract_task).options(num_cpus=cpus_per_task, num_gpus=gpus, max_retries=0)
    encoder_ref = ray.put(encoder)
    threads = max(1, int(cpus_per_task))
    refs = [
        task.remote(
            p,
            str(job_dir),
            encoder_ref,
            device,
            threads,
            on_error,
            {**kwargs, "mpp": slide_mpp(p, mpp), "identity": identity},
        )
        for p in paths
    ]
    results = gather(refs, desc="slides", unit="slide", progress=progress)
    done: dict[str, dict[str, Path]] = {}
    failed: dict[str, str] = {}
    for p, (files, error) in zip(paths, results):
        if error is None:
            done[p.stem] = files
        else:
            failed[p.stem] = error
    return done, failed
