"""Seconds from process start to the first step of ``WSIZoom-v0``: cold vs warm precompute cache.

Each measurement is a fresh Python process (imports, dataset, HAFED/TSU, ``V`` of the split, the
evidence table for ``reward="evidence"``, ``reset``, one ``step``), timed from ``Popen`` to the child's
exit after its first step, in wall seconds and in the child's CPU seconds (user + system, which other
load on a shared machine changes less):

- ``cold``: an empty precompute cache (:mod:`wsigym.envs.precompute_cache`): ``V`` of every slide of
  the split is computed (HAFED level 1 on the regenerated high-res children) and the evidence table too;
- ``warm``: the next process on the same cache, which reads them (run ``--warm-runs`` times).

The benchmark's cache root is a fresh temp folder (``--keep`` keeps it); the already-built synth-c16
dataset folder of the real cache root (``$WSIGYM_CACHE``, default ``~/.cache/wsigym``) is linked into
it, so "cold" means a cold precompute cache, not a dataset build (which happens once per machine).

Run: ``.venv/bin/python benchmarks/cache_warm_start.py`` (``--help``: dataset, split, reward, threads, JSON).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wsigym.io import atomic_write_json

CHILD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
import gymnasium as gym
import numpy as np
import wsigym
env = gym.make("WSIZoom-v0", dataset=sys.argv[2], split=sys.argv[3], reward=sys.argv[4], progress=False)
obs, info = env.reset(seed=0)
env.step(int(np.flatnonzero(info["action_mask"])[0]))
print("FIRST_STEP", flush=True)
"""


def time_first_step(args: argparse.Namespace, cache: Path) -> tuple[float, float]:
    """``(wall, cpu)`` seconds from starting a child process to its first step, with
    ``WSIGYM_CACHE=cache``; ``cpu`` is the child's user + system time (less sensitive to other load)."""
    env = {**os.environ, "WSIGYM_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(args.threads), args.dataset, args.split, args.reward],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0 or "FIRST_STEP" not in run.stdout:
        raise SystemExit(f"the child process failed:\n{run.stderr[-3000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def link_datasets(real: Path, cache: Path) -> list[str]:
    """Symlink the built dataset folders (``synth-c16*``) of ``real`` into ``cache``."""
    linked = []
    for p in sorted(real.glob("synth-c16*")) if real.is_dir() else []:
        if p.is_dir() and (p / "manifest.json").is_file():
            (cache / p.name).symlink_to(p.resolve(), target_is_directory=True)
            linked.append(p.name)
    return linked


def main() -> None:
    from wsigym.cachedir import cache_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synth-c16")
    ap.add_argument("--split", default="train")
    ap.add_argument("--reward", default="evidence", help="evidence (also builds the evidence table) or ce")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the child processes")
    ap.add_argument("--warm-runs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark's cache folder")
    args = ap.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="wsigym-cache-bench-"))
    try:
        linked = link_datasets(cache_root(), cache)
        print(f"cache root {cache} (datasets linked from {cache_root()}: {linked or 'none, built cold'})")
        cold = time_first_step(args, cache)
        print(f"cold: {cold[0]:.1f} s ({cold[1]:.1f} s CPU)", flush=True)
        warm = [time_first_step(args, cache) for _ in range(args.warm_runs)]
        print(f"warm: {', '.join(f'{w:.1f} s ({c:.1f} s CPU)' for w, c in warm)}", flush=True)
        disk = sum(f.stat().st_size for f in (cache / "precompute").rglob("*") if f.is_file())
    finally:
        if args.keep:
            print(f"kept {cache}")
        else:
            shutil.rmtree(cache, ignore_errors=True)
    best = min(warm)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    title = f"{args.dataset} {args.split}, WSIZoom-v0 reward={args.reward}, {args.threads} thread(s)"
    print(f"\n| {title} | cold cache | warm cache (best) | cold / warm |\n|---|---:|---:|---:|")
    print(f"| seconds to first step (wall) | {cold[0]:.1f} | {best[0]:.1f} | {cold[0] / best[0]:.1f}x |")
    print(f"| CPU seconds to first step | {cold[1]:.1f} | {best[1]:.1f} | {cold[1] / best[1]:.1f}x |")
    print(
        f"\nprecompute cache on disk: {disk / 2**20:.0f} MiB; load average at the end: {load:.1f} on {os.cpu_count()} CPUs"
    )
    if args.json is not None:
        payload = {
            "dataset": args.dataset,
            "split": args.split,
            "reward": args.reward,
            "threads": args.threads,
            "cold_seconds": cold[0],
            "cold_cpu_seconds": cold[1],
            "warm_seconds": [w for w, _ in warm],
            "warm_cpu_seconds": [c for _, c in warm],
            "precompute_bytes": disk,
        }
        atomic_write_json(args.json, payload)


if __name__ == "__main__":
    main()
