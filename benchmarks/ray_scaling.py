"""Local vs Ray: wall time of the evaluation protocol and of slide extraction, 1 and 2 Ray workers.

One run prints, side by side for each workload,

- the wall time with the local backend (one process, one torch thread), with Ray on a local cluster of 1
  worker (``num_cpus=1``) and of 2 workers (``num_cpus=2``);
- the speed-up of 2 Ray workers over local (goal on 2 cores: >= 1.7x);
- the overhead per task, ``(Ray 1 worker - local) / tasks``, also as a share of the mean task's work
  (``local / tasks``) (goal: < 5%). It includes shipping the inputs and rebuilding the environments
  from the object store in each worker (evaluation), or shipping each slide's arguments and results
  and loading the encoder once per worker process (extraction);
- the encoder loads of extraction: per worker process that ran slides, the seconds it spent fetching
  and deserialising the job's encoder (once per process and job), with 1 and 2 workers;
- a projection to N workers: ``max(longest task, work * (1 + overhead share) / N)``, the bound set by
  the total work and by the longest task (the protocol has one task per agent, budget and seed, so
  with more workers than tasks the longest task is the wall time).

Workloads: the evaluation protocol on synth-c16's test split (``--slides`` slides; agents random,
attention-top-k, coverage, oracle at budgets 10% and 20%, ``--seeds`` seeds: one task per agent,
budget and seed, deterministic agents once per budget) and ``wsigym slides extract`` of ``--extract``
synthetic 20x slides (2048^2 px, the test slides' generator) with a random-init ``timm:resnet10t`` at
128 px patches, 5x/10x (one task per slide). ``--workloads`` picks either or both (default). The Ray
cluster's start and a warm-up call of each workload (worker processes start and import torch: seconds,
once per cluster, as on a running cluster) are printed apart and not counted, as the local backend's
warm-up (reading synth-c16's ``V`` into the process) is not; the warm-up extracts two other slides
(one per worker process) with another encoder object, so the timed job still loads its own encoder in
every worker process. Every configuration computes the same numbers (checked here).

    .venv/bin/python benchmarks/ray_scaling.py                       # ~10 min on 2 shared cores
    .venv/bin/python benchmarks/ray_scaling.py --slides 8 --extract 4   # a quicker look
    .venv/bin/python benchmarks/ray_scaling.py --workloads extraction   # extraction alone
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

WORKLOADS = ("evaluation", "extraction")


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


def _extract(backend: str, slides: Path, job: Path) -> tuple[float, dict, list[float], dict[str, Any]]:
    """Wall time, done slides, per-slide work (local) and the Ray job's ``stats`` (Ray)."""
    from wsigym.slides.encoders import build_encoder
    from wsigym.slides.extract import encoder_identity, extract_features, extract_folder

    torch.manual_seed(0)
    encoder = build_encoder("timm:resnet10t")
    identity = encoder_identity(encoder)
    geometry = {"lr_mag": 5.0, "hr_mag": 10.0, "patch_size": 128}
    durations: list[float] = []
    stats: dict[str, Any] = {}
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

        done, _ = extract_folder_ray(
            slides, job, encoder, progress=False, identity=identity, stats=stats, **geometry
        )
    return time.perf_counter() - t0, done, durations, stats


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
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=WORKLOADS,
        default=list(WORKLOADS),
        help="which workloads to time (default: both)",
    )
    parser.add_argument("--slides", type=int, default=24, help="test slides of synth-c16 in the protocol")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extract", type=int, default=6, help="synthetic slides to extract (0: skip)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    evaluation = "evaluation" in args.workloads
    extraction = "extraction" in args.workloads and args.extract > 0
    if not (evaluation or extraction):
        parser.error("nothing to time: --workloads extraction needs --extract > 0")
    torch.set_num_threads(1)
    import ray

    from wsigym.distributed.cluster import connect
    from wsigym.slides.synthetic_slides import write_aperio_tiff

    rows: dict[str, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    slide_dir, warm_dir = tmp / "slides", tmp / "warm-slides"
    names = [f"s{i}" for i in range(args.extract)]
    if extraction:
        slide_dir.mkdir()
        for i in range(args.extract):
            write_aperio_tiff(slide_dir / f"s{i}.svs", width=2048, height=2048, mpp=0.5, levels=2, seed=i)
        warm_dir.mkdir()
        for i in range(2):  # one per worker process of the 2-worker cluster
            write_aperio_tiff(warm_dir / f"w{i}.svs", width=1024, height=1024, mpp=0.5, levels=2, seed=i)

    if evaluation:
        _evaluate("local", 2, args.seeds[:1])  # warm-up: synth-c16's V read into this process once
        t, report, durations = _evaluate("local", args.slides, args.seeds)
        rows["evaluation"] = {
            "local": t,
            "tasks": len(durations),
            "task_s": durations,
            "ref": _metrics(report),
        }
    if extraction:
        t, _, durations, _ = _extract("local", slide_dir, tmp / "job-local")
        rows["extraction"] = {"local": t, "tasks": len(durations), "task_s": durations}
        rows["extraction"]["ref"] = _features(tmp / "job-local", names)
    starts, warmups = {}, {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        connect(num_cpus=workers, num_gpus=0)
        starts[workers] = time.perf_counter() - t0
        t0 = time.perf_counter()  # warm-up, as for local: the workers start and import torch once
        if evaluation:
            _evaluate("ray", 2, args.seeds[:1])
        if extraction:
            _extract("ray", warm_dir, tmp / f"job-warm{workers}")
        warmups[workers] = time.perf_counter() - t0
        if evaluation:
            t, report, _ = _evaluate("ray", args.slides, args.seeds)
            assert _metrics(report) == rows["evaluation"]["ref"], "Ray's evaluation differs from local"
            rows["evaluation"][f"ray{workers}"] = t
        if extraction:
            t, _, _, stats = _extract("ray", slide_dir, tmp / f"job-ray{workers}")
            assert _features(tmp / f"job-ray{workers}", names) == rows["extraction"]["ref"], "features differ"
            rows["extraction"][f"ray{workers}"] = t
            rows["extraction"][f"loads{workers}"] = [round(q["load_s"], 3) for q in stats["processes"]]
            rows["extraction"][f"slides_per_process{workers}"] = [q["slides"] for q in stats["processes"]]
        ray.shutdown()

    print(
        f"Ray scaling on {torch.get_num_threads()} torch thread(s) per task; cluster start "
        f"{starts[1]:.1f} s (1 worker), {starts[2]:.1f} s (2 workers) and a warm-up call of each workload "
        f"(worker processes start, import torch) {warmups[1]:.1f} s / {warmups[2]:.1f} s, not counted "
        "(local had its warm-up too). Results identical to local: yes."
    )
    if extraction:
        r = rows["extraction"]
        print(
            f"Extraction slides per worker process: {r['slides_per_process1']} (1 worker), "
            f"{r['slides_per_process2']} (2 workers); each process loads the job's encoder once."
        )
    print()
    print(
        "| workload | tasks | local s | Ray 1 worker s | Ray 2 workers s | speed-up 2w/local "
        "| overhead/task s | % of task | encoder loads 1w / 2w s | projected 4 / 8 / 16 workers s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
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
        loads = f"{r['loads1']} / {r['loads2']}" if "loads1" in r else "-"
        print(
            f"| {name} | {tasks} | {r['local']:.1f} | {r['ray1']:.1f} | {r['ray2']:.1f} | {speedup:.2f}x | "
            f"{overhead:.2f} | {100 * share:.1f}% | {loads} | {' / '.join(f'{p:.1f}' for p in proj)} |"
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
        if "loads1" in r:
            summary[name]["encoder_load_s"] = {"1": r["loads1"], "2": r["loads2"]}
            summary[name]["slides_per_process"] = {
                "1": r["slides_per_process1"],
                "2": r["slides_per_process2"],
            }
    print()
    print(
        "Overhead: (Ray 1 worker - local) / tasks. Projection: max(longest task, total work x (1 + overhead "
        "share) / N). Beyond ~tasks/2 workers the longest task bounds the wall time; more slides "
        "(evaluation) or more slides per cohort (extraction) raise the bound."
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"workloads": list(rows), "starts_s": starts, "warmups_s": warmups, "rows": summary},
                indent=2,
                allow_nan=True,
            )
        )
    if not math.isfinite(sum(v["speedup_2_workers"] for v in summary.values())):
        raise SystemExit("non-finite timing")


if __name__ == "__main__":
    main()
