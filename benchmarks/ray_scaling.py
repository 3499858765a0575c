"""Local vs Ray: wall time of the evaluation protocol and of slide extraction, 1 and 2 Ray workers.

One run prints, side by side for each workload,

- the wall time with the local backend (one process, one torch thread), with Ray on a local cluster of 1
  worker (``num_cpus=1``) and of 2 workers (``num_cpus=2``);
- the speed-up of 2 Ray workers over local (goal on 2 cores: >= 1.7x);
- the overhead per task: ``(Ray 1 worker - local) / tasks``, and as a share of the mean task's work
  (``local / tasks``) (goal: < 5%); it includes shipping the inputs, starting worker processes
  (importing torch) and rebuilding the environments from the object store in each worker;
- a projection to N workers: ``max(longest task, work * (1 + overhead) / N)``, the bound set by the
  total work and by the longest task (the protocol has one task per agent, budget and seed, so with
  more workers than tasks the longest task is the wall time).

Workloads: the evaluation protocol on synth-c16's test split (``--slides`` slides; agents random,
attention-top-k, coverage, oracle at budgets 10% and 20%, ``--seeds`` seeds: one task per agent,
budget and seed, deterministic agents once per budget) and ``wsigym slides extract`` of ``--extract``
synthetic 20x slides (2048^2 px, the test slides' generator) with a random-init ``timm:resnet10t`` at
128 px patches, 5x/10x (one task per slide). The Ray cluster's start and a warm-up call (worker processes
start and import torch: seconds, once per cluster) are printed apart and not counted, as the local
backend's warm-up (reading synth-c16's ``V`` into the process) is not. Every configuration computes the same numbers (checked here).

    .venv/bin/python benchmarks/ray_scaling.py                       # ~10 min on 2 shared cores
    .venv/bin/python benchmarks/ray_scaling.py --slides 8 --extract 4   # a quicker look
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _evaluate(backend: str, slides: int, seeds: list[int]) -> tuple[float, Any, list[float]]:
    import wsigym.evaluate as ev

    durations: list[float] = []
    original = ev.run_job

    def timed(job, env, progress=False):  # per-task work of the local backend (for the projection)
        t0 = time.perf_counter()
        out = original(job, env, progress=progress)
        durations.append(time.perf_counter() - t0)
        return out

    ev.run_job = timed if backend == "local" else original
    try:
        t0 = time.perf_counter()
        report = ev.evaluate(
            ["random", "attention-topk", "coverage", "oracle"],
            dataset="synth-c16",
            split="test",
            budgets=(0.1, 0.2),
            seeds=seeds,
            max_slides=slides,
            progress=False,
            backend=backend,
        )
        return time.perf_counter() - t0, report, durations
    finally:
        ev.run_job = original


def _extract(backend: str, slides: Path, job: Path) -> tuple[float, dict, list[float]]:
    from wsigym.slides.encoders import build_encoder
    from wsigym.slides.extract import encoder_identity, extract_features, extract_folder

    torch.manual_seed(0)
    encoder = build_encoder("timm:resnet10t")
    identity = encoder_identity(encoder)
    geometry = {"lr_mag": 5.0, "hr_mag": 10.0, "patch_size": 128}
    durations: list[float] = []
    t0 = time.perf_counter()
    if backend == "local":
        import wsigym.slides.extract as ex

        @functools.wraps(extract_features)  # extract_folder reads its signature
        def timed(*args, **kwargs):
            s = time.perf_counter()
            out = extract_features(*args, **kwargs)
            durations.append(time.perf_counter() - s)
            return out

        ex.extract_features = timed
        try:
            done, _ = extract_folder(slides, job, encoder, progress=False, identity=identity, **geometry)
        finally:
            ex.extract_features = extract_features
    else:
        from wsigym.distributed.extraction import extract_folder_ray

        done, _ = extract_folder_ray(slides, job, encoder, progress=False, identity=identity, **geometry)
    return time.perf_counter() - t0, done, durations


def _features(job: Path, names: list[str]) -> list[bytes]:
    import h5py

    from wsigym.slides.extract import output_paths

    out = []
    for name in names:
        for key in ("lr_features", "hr_features"):
            with h5py.File(output_paths(job, name, "resnet10t", 5.0, 10.0, 128)[key], "r") as f:
                out.append(f["features"][:].tobytes())
    return out


def _metrics(report: Any) -> list:
    return [
        (r.agent, r.budget, [{k: v for k, v in s.items() if k != "seconds_per_slide"} for s in r.per_seed])
        for r in report.rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=24, help="test slides of synth-c16 in the protocol")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extract", type=int, default=6, help="synthetic slides to extract (0: skip)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    from wsigym.distributed.cluster import connect
    from wsigym.slides.synthetic_slides import write_aperio_tiff

    rows: dict[str, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    slide_dir = tmp / "slides"
    slide_dir.mkdir()
    for i in range(args.extract):
        write_aperio_tiff(slide_dir / f"s{i}.svs", width=2048, height=2048, mpp=0.5, levels=2, seed=i)
    names = [f"s{i}" for i in range(args.extract)]

    _evaluate("local", 2, args.seeds[:1])  # warm-up: synth-c16's V read into this process once
    t, report, durations = _evaluate("local", args.slides, args.seeds)
    rows["evaluation"] = {"local": t, "tasks": len(durations), "task_s": durations, "ref": _metrics(report)}
    if args.extract:
        t, _, durations = _extract("local", slide_dir, tmp / "job-local")
        rows["extraction"] = {"local": t, "tasks": len(durations), "task_s": durations}
        rows["extraction"]["ref"] = _features(tmp / "job-local", names)
    starts, warmups = {}, {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        connect(num_cpus=workers, num_gpus=0)
        starts[workers] = time.perf_counter() - t0
        t0 = time.perf_counter()  # warm-up, as for local: the workers start and import torch once
        _evaluate("ray", 2, args.seeds[:1])
        warmups[workers] = time.perf_counter() - t0
        t, report, _ = _evaluate("ray", args.slides, args.seeds)
        assert _metrics(report) == rows["evaluation"]["ref"], "Ray's evaluation differs from local"
        rows["evaluation"][f"ray{workers}"] = t
        if args.extract:
            t, _, _ = _extract("ray", slide_dir, tmp / f"job-ray{workers}")
            assert _features(tmp / f"job-ray{workers}", names) == rows["extraction"]["ref"], "features differ"
            rows["extraction"][f"ray{workers}"] = t
        ray.shutdown()

    print(
        f"Ray scaling on {torch.get_num_threads()} torch thread(s) per task; cluster start "
        f"{starts[1]:.1f} s (1 worker), {starts[2]:.1f} s (2 workers) and a warm-up call (worker processes "
        f"start, import torch) {warmups[1]:.1f} s / {warmups[2]:.1f} s, not counted (local had its warm-up too). "
        "Results identical to local: yes."
    )
    print()
    print(
        "| workload | tasks | local s | Ray 1 worker s | Ray 2 workers s | speed-up 2w/local | overhead/task s | overhead % of task | projected 4 / 8 / 16 workers s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    summary = {}
    for name, r in rows.items():
        tasks = r["tasks"]
        mean_task = r["local"] / tasks
        overhead = (r["ray1"] - r["local"]) / tasks
        share = overhead / mean_task
        longest = max(r["task_s"])
        work = sum(r["task_s"])
        proj = [max(longest, work * (1 + max(share, 0.0)) / n) for n in (4, 8, 16)]
        speedup = r["local"] / r["ray2"]
        print(
            f"| {name} | {tasks} | {r['local']:.1f} | {r['ray1']:.1f} | {r['ray2']:.1f} | {speedup:.2f}x | "
            f"{overhead:.2f} | {100 * share:.1f}% | {' / '.join(f'{p:.1f}' for p in proj)} |"
        )
        summary[name] = {
            "tasks": tasks,
            "local_s": r["local"],
            "ray1_s": r["ray1"],
            "ray2_s": r["ray2"],
            "speedup_2_workers": speedup,
            "overhead_per_task_s": overhead,
            "overhead_share": share,
            "longest_task_s": longest,
            "projected_s": dict(zip(("4", "8", "16"), proj)),
        }
    print()
    print(
        "Projection: max(longest task, total work x (1 + overhead) / N). Beyond ~tasks/2 workers the longest "
        "task bounds the wall time; more slides (evaluation) or more slides per cohort (extraction) raise the bound."
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"starts_s": starts, "warmups_s": warmups, "rows": summary}, indent=2, allow_nan=True)
        )
    if not math.isfinite(sum(v["speedup_2_workers"] for v in summary.values())):
        raise SystemExit("non-finite timing")


if __name__ == "__main__":
    main()
