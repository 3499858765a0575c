"""Is a trained zoom policy held back by its greedy decoding? (a diagnostic for SASHA's recipe on synth-c16)

SASHA evaluates its policy by argmax (``ppo.py``; top-k and top-p sampling are options there), and so does
``wsigym evaluate``. A greedy policy zooms the patches its scorer ranks highest, which on a slide are often
alike and near one another, while on synth-c16 a slide is decided by whether *one* zoom reaches its tumour
(``tumour_reached``). This script scores one saved policy both ways on the same slides, next to random zooms:

- ``greedy``: argmax over the legal patches (the protocol's agent);
- ``sampled``: a draw from ``softmax(logits)`` over the legal patches, seeded per episode seed;
- ``random`` (with ``--random``): uniform over the legal patches (the protocol's random baseline at the same
  episode seeds; ``wsigym evaluate --agent random`` gives it too).

The greedy policy and the environment are deterministic, so ``greedy`` is run once (episode seed 0); the
other agents draw, once per seed.

It prints accuracy, AUC, tumour hits (share of zooms on tumour), tumour reached (share of tumour slides with
at least one tumour zoom) and, for the policy at ``S_0`` (mean over slides), the normalised entropy of its first
action (``H(softmax(logits over the N legal patches)) / log N``: 1 is uniform, 0 one patch) and the standard
deviation of those logits in nats (how far the actor is from uniform; a logit spread of ``s`` changes a patch's
probability by a factor of about ``e^s``).

Run from the repository root (a few minutes per budget and seed on one thread)::

    .venv/bin/python examples/greedy_vs_sampled_policy.py results/synth-c16/reproduce/tsu-10pct-15p-seed1 \\
        --budget 0.1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.saved_policy import PolicyAgent, load_policy
from wsigym.evaluate import evaluate


class SampledPolicy:
    """A saved policy that draws its action from ``softmax(logits)`` over the legal patches."""

    name = "sampled"

    def __init__(self, greedy: PolicyAgent, seed: int) -> None:
        self.greedy, self.rng = greedy, np.random.default_rng(seed)

    def reset(self, env: Any, obs: dict, info: dict) -> None:
        self.greedy.reset(env, obs, info)

    def __call__(self, obs: dict, info: dict) -> int:
        legal = np.flatnonzero(np.asarray(obs["action_mask"]).astype(bool))
        logits = self.greedy.logits(obs)[legal].astype(np.float64)
        p = np.exp(logits - logits.max())
        return int(self.rng.choice(legal, p=p / p.sum()))


def first_action_spread(agent: PolicyAgent, budget: float, slides: int | None) -> tuple[float, float]:
    """Means over test slides of the normalised entropy of the policy's distribution at ``S_0`` and of the
    standard deviation of its logits over the legal patches."""
    env = gym.make("WSIZoom-v0", dataset="synth-c16", split="test", budget=budget, progress=False)
    ids = env.unwrapped.slide_ids[:slides] if slides else env.unwrapped.slide_ids
    entropies, spreads = [], []
    for slide_id in ids:
        obs, _ = env.reset(seed=0, options={"slide_id": slide_id})
        agent.reset()
        legal = np.asarray(obs["action_mask"]).astype(bool)
        logits = torch.as_tensor(agent.logits(obs)[legal], dtype=torch.float64)
        p = torch.softmax(logits, 0)
        entropies.append(float(-(p * torch.log(p.clamp_min(1e-300))).sum()) / math.log(int(legal.sum())))
        spreads.append(float(logits.std()))
    env.close()
    return float(np.mean(entropies)), float(np.mean(spreads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "policy", help="a policy folder (policy.json + policy.safetensors), e.g. a run folder"
    )
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--slides", type=int, default=None, help="first N test slides only (quick look)")
    parser.add_argument("--random", action="store_true", help="also random zooms at the same seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    greedy = load_policy(args.policy)
    entropy, spread = first_action_spread(greedy, args.budget, args.slides)
    print(f"at S_0: entropy / log N {entropy:.5f}, logit std {spread:.4f} nats")
    rows = []
    for seed in args.seeds:  # one sampled agent per seed, so each seed draws differently
        agents: list[Any] = [SampledPolicy(load_policy(args.policy), seed)]
        names = ["sampled"]
        if seed == args.seeds[0]:  # deterministic: once
            agents, names = [load_policy(args.policy), *agents], ["greedy", *names]
        if args.random:
            agents, names = [*agents, "random"], [*names, "random"]
        report = evaluate(
            agents,
            names=names,
            dataset="synth-c16",
            budgets=(args.budget,),
            seeds=(seed,),
            max_slides=args.slides,
            progress=False,
        )
        rows += [(seed, r.agent, r.mean) for r in report.rows]
    print(f"{'agent':8s} {'seed':>4s} {'accuracy':>8s} {'AUC':>6s} {'hits':>6s} {'reached':>7s}")
    for seed, agent, m in sorted(rows, key=lambda r: (r[1], r[0])):
        print(
            f"{agent:8s} {seed:4d} {m['accuracy']:8.3f} {m['auc']:6.3f} {m['tumour_hits']:6.3f} "
            f"{m['tumour_reached']:7.3f}"
        )


if __name__ == "__main__":
    main()
