"""``wsigym slides extract --backend ray``: one Ray task per slide, the encoder loaded once per worker process.

The job folder's encoder is checked and recorded once, here, before any slide is read (as the local
backend does, :func:`wsigym.slides.extract.prepare_job`); the encoder goes into Ray's object store once
(``ray.put``). Then each slide is one task, at most ``workers`` in flight (a work queue,
:func:`wsigym.distributed.gather.map_bounded`: the next slide starts as soon as one finishes, so a slow
slide holds up one worker, not the others).

**The encoder, once per worker process.** A task receives the encoder's object-store reference, not the
encoder (the reference is wrapped in a list, so Ray does not resolve it), and keeps what it fetched in
its worker process (:func:`worker_encoder`): the first slide a process runs in a job deserialises the
encoder, moves it to the device and sets the torch threads; its later slides reuse it. Tasks run in
Ray's pooled worker processes, which stay up between jobs, so a job on a running cluster starts no
process and imports nothing (a pool of actors, the earlier design, started new processes in every job:
~3.5 s, and one task per slide that received the encoder itself paid ~0.4 s per slide to deserialise it;
``benchmarks/ray_scaling.py``). A process holds one job's encoder at a time: the next job's first task
there replaces it. On a GPU the encoder stays on the worker's GPU between the slides of a job and, once
the job is over, until that process runs its next extraction or Ray ends it.

A task runs :func:`wsigym.slides.extract.extract_or_report` on its slide, so everything the local
backend does holds per slide: a slide whose files are complete is skipped (a killed job resumes where it
stopped: files are written to a temp file and renamed), and with ``on_error="skip"`` a bad slide returns
its one-line error while the others go on; with ``on_error="raise"`` the first bad slide's own error is
raised and the slides in flight are cancelled. ``job_dir`` must be one folder that every node of the
cluster sees (a shared filesystem); on one machine that is any folder.

GPUs: with ``device="cuda"`` each task asks Ray for one GPU (``num_gpus=1``), so a node with G GPUs runs
G slides at once; the worker processes are kept between tasks (``max_calls=0``; Ray's default for GPU
tasks is to end the process after each one), so the encoder is moved to a GPU once per process.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wsigym.distributed.cluster import connect, gpus_per_task
from wsigym.distributed.gather import map_bounded
from wsigym.slides.encoders import PatchEncoder
from wsigym.slides.extract import extract_or_report, list_slides, prepare_job, slide_mpp

#: This worker process's encoder: ``(key, encoder)`` of the job it last ran a slide of, or None.
_WORKER_ENCODER: tuple[str, PatchEncoder] | None = None


def worker_encoder(ref: Any, device: str | None) -> tuple[PatchEncoder, float | None]:
    """The encoder behind the object-store reference ``ref``, on ``device``, fetched once per process.

    Returns:
        ``(encoder, seconds)``: ``seconds`` spent here fetching, deserialising and moving it; None when
        this process already held it.
    """
    global _WORKER_ENCODER
    import ray

    key = f"{ref.hex()}@{device}"
    if _WORKER_ENCODER is not None and _WORKER_ENCODER[0] == key:
        return _WORKER_ENCODER[1], None
    _WORKER_ENCODER = None  # the last job's encoder goes before this one arrives
    t0 = time.perf_counter()
    encoder = ray.get(ref)
    if device is not None and hasattr(encoder, "to"):
        encoder = encoder.to(device)
    _WORKER_ENCODER = (key, encoder)
    return encoder, time.perf_counter() - t0


def extract_slide(
    encoder_ref: list[Any],
    path: Path,
    job_dir: str,
    on_error: str,
    kwargs: dict[str, Any],
    device: str | None,
    threads: int,
) -> tuple[tuple[dict[str, Path] | None, str | None], dict[str, Any]]:
    """One task: :func:`wsigym.slides.extract.extract_or_report` of the slide ``path``.

    Args:
        encoder_ref: ``[ref]``, the encoder's object-store reference (in a list, so Ray passes the
            reference and :func:`worker_encoder` fetches it once per process).

    Returns:
        ``(result, record)``: ``extract_or_report``'s ``(paths, error)``, and ``{"pid", "load_s"}``, the
        worker process and the seconds it spent loading the encoder for this slide (None: it held it).
    """
    import torch

    torch.set_num_threads(threads)
    encoder, load_s = worker_encoder(encoder_ref[0], device)
    result = extract_or_report(path, job_dir, encoder, on_error=on_error, progress=False, **kwargs)
    return result, {"pid": os.getpid(), "load_s": load_s}


def cluster_slots(ray: Any, cpus: float, gpus: float) -> int:
    """How many tasks of ``cpus`` CPUs and ``gpus`` GPUs the cluster's live nodes run at once (>= 1).

    Counted node by node (a task runs on one node), on the nodes' total resources.
    """
    slots = 0
    for node in ray.nodes():
        if not node.get("Alive", False):
            continue
        have = node.get("Resources", {})
        fits = math.inf
        for need, key in ((cpus, "CPU"), (gpus, "GPU")):
            if need > 0:
                fits = min(fits, math.floor(have.get(key, 0.0) / need + 1e-9))
        slots += 10**6 if math.isinf(fits) else int(fits)
    return max(1, slots)


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
    workers: int | None = None,
    address: str | None = None,
    stats: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """:func:`wsigym.slides.extract.extract_folder` as Ray tasks (same arguments, same files and return
    value).

    Args:
        device: where each task runs the encoder (``"cuda"`` asks Ray for one GPU per task; None: the
            encoder's own device, which must then exist on every node).
        cpus_per_task: CPU cores a task reserves (and its torch threads).
        workers: how many slides are extracted at once (None: as many tasks as the cluster's nodes hold
            of ``cpus_per_task`` CPUs and, with a CUDA device, one GPU each); never more than the slides.
        address: the cluster (:func:`wsigym.distributed.cluster.connect`; ignored when already connected).
        stats: when given, filled with ``workers`` (slides at once) and, after a run without error,
            ``processes``: ``{"pid", "slides", "loads", "load_s"}`` of each worker process that ran a
            slide (slides run, encoder loads, seconds spent loading it).

    Returns:
        ``(done, failed)``: ``{slide_id: paths}`` and ``{slide_id: error message}``, in slide order.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    identity = prepare_job(job_dir, encoder, identity, **kwargs)
    ray = connect(address)
    paths = list_slides(slides)
    gpus = gpus_per_task(device if device is not None else str(getattr(encoder, "device", "cpu")))
    count = min(workers if workers is not None else cluster_slots(ray, cpus_per_task, gpus), len(paths))
    if stats is not None:
        stats.update(workers=count, processes=[])
    if not paths:
        return {}, {}
    threads = max(1, int(cpus_per_task))
    # max_calls=0: worker processes are reused (Ray ends a GPU task's process after one call unless the
    # decorator says otherwise; ``.options`` cannot)
    task = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus, max_retries=0, max_calls=0)(extract_slide)
    encoder_ref = [ray.put(encoder)]
    outputs = map_bounded(
        lambda p: task.remote(
            encoder_ref,
            p,
            str(job_dir),
            on_error,
            {**kwargs, "mpp": slide_mpp(p, mpp), "identity": identity},
            device,
            threads,
        ),
        paths,
        slots=count,
        desc="slides",
        unit="slide",
        progress=progress,
    )
    if stats is not None:
        processes: dict[int, dict[str, Any]] = {}
        for _, record in outputs:
            seen = processes.setdefault(
                record["pid"], {"pid": record["pid"], "slides": 0, "loads": 0, "load_s": 0.0}
            )
            seen["slides"] += 1
            if record["load_s"] is not None:
                seen["loads"] += 1
                seen["load_s"] += record["load_s"]
        stats["processes"] = list(processes.values())
    done: dict[str, dict[str, Path]] = {}
    failed: dict[str, str] = {}
    for p, ((files, error), _) in zip(paths, outputs):
        if error is None:
            done[p.stem] = files
        else:
            failed[p.stem] = error
    return done, failed
