"""Where one ``WSIZoom-v0`` step spends its time: cProfile of random legal steps (``copy_obs=False``).

The slide and models are those of ``benchmarks/env_speed.py`` (synthetic clustered features, N = 2000,
d = 384, random HAFED and TSU at tau 0.95, one thread). Prints the calls per step, the share of the
similarity scan (``torch.mv``) in the profiled time, the top functions by own time and the torch operations
per step. Then, without the
profiler, the step split into the work on the changed rows (``f_S`` and HAFED's attention on them, timed by
wrappers) and the rest, each against one ``N x d`` scan: the terms of the goal "a step within 3x of the
scan plus O(changed rows)". With several ``--n`` the profile is of the first size and the split is printed
for each. The rest holds the TSU's scan of the pending rows with its numpy bookkeeping, which grow with
``N``, and a per-step overhead of ~130 small torch operations, which does not: it dominates at N = 2000,
so the rest's ratio to one scan falls as the slide grows.

Run: ``python benchmarks/env_step_profile.py [--n 2000 10000] [--steps 300]``.
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
from torch.utils._python_dispatch import TorchDispatchMode

import zoo
from wsigym.data.random_dataset import random_dataset
from wsigym.envs.slide_source import ORACLE_VIEW
from wsigym.envs.zoom import WSIZoomEnv


def make_env(n: int, dim: int) -> tuple[WSIZoomEnv, torch.nn.Module]:
    """``WSIZoom-v0`` on 4 synthetic clustered slides of ``n`` rows (``env_speed.py``'s), and its TSU."""
    torch.manual_seed(0)
    data = random_dataset(
        4, n, dim, clusters=max(1, n // 20), cluster_noise=0.2, views={ORACLE_VIEW: 0.5}, split=(0, 0)
    )
    hafed = zoo.create_model("hafed", in_dim=dim).eval()
    tsu = zoo.create_model("tsu", in_dim=dim, tau=0.95).eval()
    return WSIZoomEnv(dataset=data, hafed=hafed, tsu=tsu, progress=False, copy_obs=False), tsu


def random_steps(env: WSIZoomEnv, seed: int) -> Callable[[int], None]:
    """``run(k)``: ``k`` random legal steps from a reset with ``seed``."""
    rng = np.random.default_rng(seed)
    info = env.reset(seed=seed)[1]

    def run(k: int) -> None:
        nonlocal info
        for _ in range(k):
            info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))[4]

    return run


def profile_steps(n: int, dim: int, steps: int) -> None:
    """cProfile of ``steps`` random steps: calls per step, the scan's share, the top functions."""
    env, _ = make_env(n, dim)
    run = random_steps(env, 0)
    run(5)
    profile = cProfile.Profile()
    profile.runcall(run, steps)
    stats = pstats.Stats(profile)
    scan = sum(v[2] for k, v in stats.stats.items() if k[2] == "<built-in method torch.mv>")
    print(
        f"N = {n}, d = {dim}, {steps} steps: {stats.total_calls / steps:.0f} calls per step, "
        f"{1e3 * stats.total_tt / steps:.2f} ms per step under the profiler, "
        f"the scan (torch.mv) {100 * scan / stats.total_tt:.0f}% of it"
    )
    stats.sort_stats("tottime").print_stats(15)
    run, ops, counted = random_steps(env, 2), OpCount(), min(steps, 100)  # a fresh episode
    run(5)
    with ops:
        run(counted)
    print(f"torch operations (ATen calls) per step: {ops.calls / counted:.0f}")


class OpCount(TorchDispatchMode):
    """Counts the ATen operations run under it (``calls``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


def step_split(n: int, dim: int, steps: int) -> None:
    """Without the profiler: a step, ``f_S`` and HAFED's attention on the changed rows, and the rest,
    against one ``N x d`` scan (one line)."""
    env, tsu = make_env(n, dim)
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
    run = random_steps(env, 1)
    run(5)
    spent.update(f_S=0.0, hafed=0.0)
    t0 = time.perf_counter()
    run(steps)
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
        return f"{1e3 * seconds / steps:.3f} ms"

    print(
        f"N = {n}, without the profiler: a step {ms(total)} ({total / steps / scan:.1f}x one scan of "
        f"{1e3 * scan:.3f} ms); on the changed rows f_S {ms(spent['f_S'])}, HAFED's attention "
        f"{ms(spent['hafed'])}; the rest {ms(rest)} = {rest / steps / scan:.1f}x the scan"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000], help="slide sizes (profile: the first)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile_steps(args.n[0], args.dim, args.steps)
    for n in args.n:
        step_split(n, args.dim, args.steps)


if __name__ == "__main__":
    main()
