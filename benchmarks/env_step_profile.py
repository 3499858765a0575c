"""Where one ``WSIZoom-v0`` step spends its time: cProfile of random legal steps (``copy_obs=False``).

The slide and models are those of ``benchmarks/env_speed.py`` (synthetic clustered features, N = 2000,
d = 384, random HAFED and TSU at tau 0.95, one thread). Prints the calls per step, the share of the
similarity scan (``torch.mv``) in the profiled time, and the top functions by own time. Then, without the
profiler, the step split into the work on the changed rows (``f_S`` and HAFED's attention on them, timed by
wrappers) and the rest, each against one ``N x d`` scan: the terms of the goal "a step within 3x of the
scan plus O(changed rows)".

Run: ``python benchmarks/env_step_profile.py [--n 2000] [--steps 300]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import zoo
from wsigym.data.random_dataset import random_dataset
from wsigym.envs.slide_source import ORACLE_VIEW
from wsigym.envs.zoom import WSIZoomEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n, dim = args.n, args.dim
    data = random_dataset(
        4, n, dim, clusters=max(1, n // 20), cluster_noise=0.2, views={ORACLE_VIEW: 0.5}, split=(0, 0)
    )
    hafed = zoo.create_model("hafed", in_dim=dim).eval()
    tsu = zoo.create_model("tsu", in_dim=dim, tau=0.95).eval()
    env = WSIZoomEnv(dataset=data, hafed=hafed, tsu=tsu, progress=False, copy_obs=False)
    rng = np.random.default_rng(0)
    info = env.reset(seed=0)[1]

    def run(k: int) -> None:
        nonlocal info
        for _ in range(k):
            info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))[4]

    run(5)
    profile = cProfile.Profile()
    profile.runcall(run, args.steps)
    stats = pstats.Stats(profile)
    scan = sum(v[2] for k, v in stats.stats.items() if k[2] == "<built-in method torch.mv>")
    print(
        f"N = {n}, d = {dim}, {args.steps} steps: {stats.total_calls / args.steps:.0f} calls per step, "
        f"{1e3 * stats.total_tt / args.steps:.2f} ms per step under the profiler, "
        f"the scan (torch.mv) {100 * scan / stats.total_tt:.0f}% of it"
    )
    stats.sort_stats("tottime").print_stats(15)

    spent = {"f_S": 0.0, "hafed": 0.0}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - t0
            return out

        return call

    classifier = env.batch.classifier
    tsu.forward_rows = timed("f_S", tsu.forward_rows)  # what the TSU rule calls (tsu_rows)
    classifier._row_logits = timed("hafed", classifier._row_logits)  # HAFED on the changed rows
    info = env.reset(seed=1)[1]
    run(5)
    spent.update(f_S=0.0, hafed=0.0)
    t0 = time.perf_counter()
    run(args.steps)
    total = time.perf_counter() - t0
    z, q = torch.randn(n, dim), torch.randn(dim)
    for _ in range(50):
        torch.mv(z, q)
    t0 = time.perf_counter()
    for _ in range(500):
        torch.mv(z, q)
    scan = (time.perf_counter() - t0) / 500
    rest = total - spent["f_S"] - spent["hafed"]

    def ms(seconds: float) -> str:
        return f"{1e3 * seconds / args.steps:.3f} ms"

    print(
        f"without the profiler: a step {ms(total)} ({total / args.steps / scan:.1f}x one scan of "
        f"{1e3 * scan:.3f} ms); on the changed rows f_S {ms(spent['f_S'])}, HAFED's attention "
        f"{ms(spent['hafed'])}; the rest {ms(rest)} = {rest / args.steps / scan:.1f}x the scan"
    )


if __name__ == "__main__":
    main()
