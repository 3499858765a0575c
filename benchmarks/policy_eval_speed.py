"""Greedy evaluation of a SASHA-recipe policy with and without its cached row logits, side by side.

A policy whose actor reads the state row alone (``tokens="state"``, the ``sasha`` recipe's) scores a row
from its value only, so :class:`wsigym.agents.saved_policy.PolicyAgent` keeps the rows' logits and recomputes
the changed rows' (``cache_logits``). This runs one episode per val slide of synth-c16 at a 20% budget
(:func:`wsigym.evaluate.run_split`, as validation during training and ``wsigym evaluate`` do) with the cache
and without it (the gates' cached pre-activations only, the path before), alternating ``--repeats`` times and
keeping the best time of each. Prints seconds, the ratio, and whether the metrics are identical.

Run: ``python benchmarks/policy_eval_speed.py [--slides 10] [--repeats 2] [--threads 1]
[--policy results/synth-c16/reproduce/tsu-20pct-15p-seed0]``.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch
from eval_copy_speed import best_times  # benchmarks/ is the script's folder

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.saved_policy import load_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--policy", default="results/synth-c16/reproduce/tsu-20pct-15p-seed0")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    agents = {cached: load_policy(args.policy) for cached in (True, False)}
    if not agents[True].cache_logits:
        raise SystemExit(f"{args.policy}: not a state-token policy without standardisation; nothing to cache")
    agents[False].cache_logits = False
    env = gym.make(
        "WSIZoom-v0", split="val", budget=0.2, progress=False, copy_obs=False, disable_env_checker=True
    )
    ids = env.unwrapped.slide_ids[: args.slides]
    best, same = best_times({cached: (agent, env) for cached, agent in agents.items()}, ids, args.repeats)
    print(
        f"{args.policy} on {len(ids)} val slides, 20% budget, {args.threads} thread(s), torch {torch.__version__}:"
    )
    print(f"  gates cached (before)  {best[False]:6.1f} s")
    print(f"  row logits cached      {best[True]:6.1f} s   ({best[False] / best[True]:.2f}x faster)")
    print(f"  metrics identical: {same}")


if __name__ == "__main__":
    main()
