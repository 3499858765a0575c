"""``wsigym slides extract --backend ray``: a fixed pool of Ray actors, each extracting slide after slide.

The job folder's encoder is checked and recorded once, here, before any slide is read (as the local
backend does, :func:`wsigym.slides.extract.prepare_job`); the encoder goes into Ray's object store once
(``ray.put``). Then ``workers`` actors start (default: as many as the cluster holds, at most one per
slide), and each one receives the encoder once, in its constructor: it is deserialised, moved to the
actor's device and given its torch threads once per worker, not once per slide (one Ray task per slide
paid all three for every slide, a quarter of a 1.7-s slide in ``benchmarks/ray_scaling.py``). The
slides form a work queue (:func:`wsigym.distributed.gather.map_on_actors`): each actor takes the next
slide as soon as it is free, so a slow slide holds up one worker, not the others.

An actor runs :func:`wsigym.slides.extract.extract_or_report` on each slide, so everything the local
backend does holds per slide: a slide whose files are complete is skipped (a killed job resumes where it
stopped: files are written to a temp file and renamed), and with ``on_error="skip"`` a bad slide returns
its one-line error while the others go on; with ``on_error="raise"`` the first bad slide's own error is
raised. The actors are killed at the end, also after an error. ``job_dir`` must be one folder that every
node of the cluster sees (a shared filesystem); on one machine that is any folder.

GPUs: with ``device="cuda"`` each actor asks Ray for one GPU (``num_gpus=1``), so a node with G GPUs
runs G actors; the encoder is moved to the actor's GPU once, in its constructor.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wsigym.distributed.cluster import connect, gpus_per_task
from wsigym.distributed.gather import map_on_actors
from wsigym.slides.encoders import PatchEncoder
from wsigym.slides.extract import extract_or_report, list_slides, prepare_job, slide_mpp


class SlideExtractor:
    """One worker of an extraction job (a Ray actor): the encoder, ready on its device, for many slides.

    Args:
        encoder: the patch encoder (passed as an object-store ref: Ray deserialises it once, here).
        device: where to run it (None: the encoder's own device).
        threads: torch threads of this worker.
    """

    def __init__(self, encoder: PatchEncoder, device: str | None, threads: int) -> None:
        import torch

        self.slides = 0
        self.error: Exception | None = None  # raised by ready(), as a task's own error (not ActorDiedError)
        try:
            torch.set_num_threads(threads)
            if device is not None and hasattr(encoder, "to"):
                encoder = encoder.to(device)
        except Exception as e:
            self.error = e
        self.encoder = encoder

    def ready(self) -> int:
        """This worker's process id, once the constructor has run.

        Raises:
            Exception: the constructor's error (e.g. the device does not exist on this node).
        """
        if self.error is not None:
            raise self.error
        return os.getpid()

    def extract(
        self, path: Path, job_dir: str, on_error: str, kwargs: dict[str, Any]
    ) -> tuple[dict[str, Path] | None, str | None]:
        """:func:`wsigym.slides.extract.extract_or_report` of one slide."""
        self.slides += 1
        return extract_or_report(path, job_dir, self.encoder, on_error=on_error, progress=False, **kwargs)

    def stats(self) -> dict[str, int]:
        """``{"pid": ..., "slides": ...}``: this worker's process and the slides it was given."""
        return {"pid": os.getpid(), "slides": self.slides}


def cluster_slots(ray: Any, cpus: float, gpus: float) -> int:
    """How many actors of ``cpus`` CPUs and ``gpus`` GPUs the cluster's live nodes hold at once (>= 1).

    Counted node by node (an actor runs on one node), on the nodes' total resources.
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
    """:func:`wsigym.slides.extract.extract_folder` on a pool of Ray actors (same arguments, same files
    and return value).

    Args:
        device: where each worker runs the encoder (``"cuda"`` asks Ray for one GPU per worker; None:
            the encoder's own device, which must then exist on every node).
        cpus_per_task: CPU cores a worker reserves (and its torch threads).
        workers: how many actors extract in parallel (None: as many as the cluster's nodes hold of
            ``cpus_per_task`` CPUs and, with a CUDA device, one GPU each); never more than the slides.
        address: the cluster (:func:`wsigym.distributed.cluster.connect`; ignored when already connected).
        stats: when given, filled with ``workers`` (actors asked for), ``start_s`` (seconds from
            putting the encoder in the object store to the last actor ready with it: a one-off per job,
            not per slide) and ``actors``: ``{"pid", "ready_s"}`` of each actor that came up, plus
            ``"slides"`` (how many it was given) after a run without error.

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
    threads = max(1, int(cpus_per_task))
    actor_class = ray.remote(SlideExtractor).options(
        num_cpus=cpus_per_task, num_gpus=gpus, max_restarts=0, max_task_retries=0
    )
    t0 = time.perf_counter()
    encoder_ref = ray.put(encoder) if count else None
    up: dict[int, dict[str, Any]] = {}  # actor index -> its record, once it is ready

    def started(k: int, pid: int) -> None:
        up[k] = {"pid": pid, "ready_s": time.perf_counter() - t0}
        if stats is not None:
            stats["start_s"] = max(r["ready_s"] for r in up.values())

    if stats is not None:
        stats.update(workers=count, start_s=0.0, actors=[])
    actors: list[Any] = []
    try:
        actors = [actor_class.remote(encoder_ref, device, threads) for _ in range(count)]
        results = map_on_actors(
            actors,
            lambda actor: actor.ready.remote(),
            lambda actor, p: actor.extract.remote(
                p, str(job_dir), on_error, {**kwargs, "mpp": slide_mpp(p, mpp), "identity": identity}
            ),
            paths,
            desc="slides",
            unit="slide",
            progress=progress,
            on_ready=started,
        )
        if stats is not None:
            for k, record in zip(up, ray.get([actors[k].stats.remote() for k in up])):
                up[k].update(record)
    finally:
        if stats is not None:
            stats["actors"] = [up[k] for k in sorted(up)]
        for actor in actors:
            ray.kill(actor)
    done: dict[str, dict[str, Path]] = {}
    failed: dict[str, str] = {}
    for p, (files, error) in zip(paths, results):
        if error is None:
            done[p.stem] = files
        else:
            failed[p.stem] = error
    return done, failed
