"""Greedy-policy evaluation with and without observation copies, side by side.

The shipped policy (``ppo-WSIZoom-v0``) runs one episode per slide of synth-c16's val split at a 20% budget
(:func:`wsigym.evaluate.run_split`, as validation during training and ``wsigym evaluate`` do), once on an
environment that copies each observation (``copy_obs=True``, Gymnasium's default behaviour) and once on one
that hands out its state buffer (``copy_obs=False``, what ``evaluate`` and validation use for the agents they
build). The two alternate ``--repeats`` times; the best time of each is kept. Prints seconds, the ratio, and
whether the metrics are identical.

Run: ``python benchmarks/eval_copy_speed.py [--slides 10] [--repeats 2] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.saved_policy import load_policy
from wsigym.evaluate import run_split


def best_times(
    runs: dict[Any, tuple[Callable, gym.Env]], ids: list[str], repeats: int
) -> tuple[dict[Any, float], bool]:
    """Best seconds of :func:`run_split` for each ``{key: (agent, env)}``, alternating ``repeats`` times, and
    whether every variant gave the same metrics (``policy_eval_speed.py`` uses it too)."""
    best: dict[Any, float] = {}
    metrics: dict[Any, str] = {}
    for _ in range(repeats):
        for key, (agent, env) in runs.items():
            t0 = time.perf_counter()
            m = run_split(agent, env, ids, seed=0)
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
            m.pop("seconds_per_slide")
            metrics[key] = json.dumps(m, sort_keys=True)
    return best, len(set(metrics.values())) == 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--policy", default="ppo-WSIZoom-v0")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    agent = load_policy(args.policy)
    envs = {
        copy: gym.make(
            "WSIZoom-v0", split="val", budget=0.2, progress=False, copy_obs=copy, disable_env_checker=True
        )
        for copy in (True, False)
    }
    ids = envs[True].unwrapped.slide_ids[: args.slides]
    best, same = best_times({copy: (agent, env) for copy, env in envs.items()}, ids, args.repeats)
    print(f"{args.policy} on {len(ids)} val slides, 20% budget, {args.threads} thread(s):")
    print(f"  copy_obs=True  {best[True]:6.1f} s")
    print(f"  copy_obs=False {best[False]:6.1f} s   ({best[True] / best[False]:.2f}x faster)")
    print(f"  metrics identical: {same}")


if __name__ == "__main__":
    main()
