"""Environment steps per second of each state-update rule on synth-c16, side by side in one run.

One ``WSIZoom-v0`` per rule (``tsu``, ``none``, ``global``; ``--views`` adds ``agent_view="lowres"``) on
one slide of ``--split`` (default: its median-size slide; the global rule's step grows with N) at ``--budget``, stepped by a random legal agent for ``--steps`` steps (episodes
restart on the same slide), 1 torch thread by default. Reported: steps/s and the ratio to the TSU rule.
This is what bounds training under each rule before any policy cost (``docs/sasha-reproduction.md``).

    .venv/bin/python benchmarks/rule_speed.py                 # the val split's median slide, 20%, 150 steps per rule
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import wsigym  # noqa: F401  (registers the environments)


def steps_per_second(env: gym.Env, steps: int, slide_index: int, seed: int = 0) -> float:
    """Random legal steps per second (the first reset is not timed)."""
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed, options={"slide_index": slide_index})
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
        if terminated or truncated:
            _, info = env.reset(options={"slide_index": slide_index})
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="synth-c16")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--slide-index", type=int, default=None, help="default: the split's median-size slide"
    )
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--views", nargs="+", default=["state"], choices=["state", "lowres"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    probe = gym.make("WSIZoom-v0", dataset=args.dataset, split=args.split, progress=False)
    sizes = np.asarray(probe.unwrapped.source.n_list)
    probe.close()
    index = int(np.argsort(sizes)[len(sizes) // 2]) if args.slide_index is None else args.slide_index
    rows = []
    for view in args.views:
        for rule in ("tsu", "none", "global"):
            env = gym.make(
                "WSIZoom-v0", dataset=args.dataset, split=args.split, budget=args.budget, update=rule,
                agent_view=view, progress=False,
            )  # fmt: skip
            rows.append((rule, view, steps_per_second(env, args.steps, index)))
            env.close()
    base = rows[0][2]
    print(
        f"{args.dataset}/{args.split} slide {index} (N = {sizes[index]}; split median {int(np.median(sizes))}), "
        f"budget {args.budget:.0%}, "
        f"{args.threads} thread(s), {args.steps} random legal steps per rule"
    )
    print(f"{'rule':8s} {'agent_view':10s} {'steps/s':>9s} {'x tsu':>7s}")
    for rule, view, sps in rows:
        print(f"{rule:8s} {view:10s} {sps:9.1f} {sps / base:7.2f}")


if __name__ == "__main__":
    main()
