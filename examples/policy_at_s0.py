"""What a saved zoom policy prefers before its first zoom: its logits at ``S_0`` on test slides (a diagnostic).

A policy gradient moves the actor away from its initialisation only as far as its reward signal and learning rate
take it. This script reads where a policy ended: for each policy, on the first ``--slides`` test slides of
synth-c16, at the reset state ``S_0`` (over the legal patches, N of them):

- ``entropy``: ``H(softmax(logits)) / log N``, mean over slides (1 is uniform, 0 one patch);
- ``logit std``: the standard deviation of the logits in nats, mean over slides (a spread of ``s`` changes a
  patch's probability by a factor of about ``e^s``);
- ``tumour AUC``: how well the logits rank the patches holding tumour above the others, mean over the tumour
  slides (0.5 is chance; this is the ranking a greedy policy zooms in);
- ``rho vs first``: Spearman's rank correlation of the policy's logits with the first policy's, mean over slides
  (near 1: the same ranking of patches).

``--init RECIPE:SEED:BUDGET`` adds first the untrained policy that ``wsigym train ppo --recipe RECIPE --seed
SEED --budget BUDGET`` starts from (initialisation is seeded, so it is the very policy that run began with), so
``rho vs first`` then says how much of a trained policy's ranking is still its initialisation's.

Run from the repository root (a minute or two on one thread)::

    .venv/bin/python examples/policy_at_s0.py results/synth-c16/reproduce/tsu-10pct-15p-seed1 \\
        zoo/assets/weights/ppo-WSIZoom-v0 --init sasha:1:0.1 --budget 0.1
"""

from __future__ import annotations

import argparse
import math
import tempfile

import gymnasium as gym
import numpy as np
import torch

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.saved_policy import PolicyAgent, load_policy


def initial_policy(recipe: str, seed: int, budget: float) -> PolicyAgent:
    """The untrained policy of ``wsigym train ppo --recipe recipe --seed seed --budget budget`` on synth-c16."""
    from wsigym.agents.policy_writer import save_policy
    from wsigym.agents.ppo import _split_env, episode_rollout, make_model
    from wsigym.agents.recipes import ppo_config

    config = ppo_config(recipe, env_kwargs={"dataset": "synth-c16", "budget": budget}, seed=seed)
    venv = _split_env(config, "train", config.n_envs, config.seed, False)
    config = episode_rollout(config, venv)
    model = make_model(config, venv)
    venv.close()
    with tempfile.TemporaryDirectory() as folder:  # through the saved form, as every other policy here
        save_policy(model, folder, config, sb3_zip=False)
        return load_policy(folder)


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks ``0..n-1`` of ``x`` (ties broken by position; the logits here are continuous)."""
    out = np.empty(len(x))
    out[np.argsort(x, kind="stable")] = np.arange(len(x))
    return out


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC of ``scores`` for the boolean ``positive``."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    r = ranks(scores)
    return float((r[positive].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg))


def logits_at_s0(agents: list[PolicyAgent], budget: float, slides: int) -> list[dict[str, float]]:
    """Per policy: the means described in the module docstring."""
    env = gym.make("WSIZoom-v0", dataset="synth-c16", split="test", budget=budget, progress=False)
    stats: list[dict[str, list[float]]] = [{"entropy": [], "std": [], "auc": [], "rho": []} for _ in agents]
    for slide_id in env.unwrapped.slide_ids[:slides]:
        obs, _ = env.reset(seed=0, options={"slide_id": slide_id})
        legal = np.asarray(obs["action_mask"]).astype(bool)
        tumour = np.nan_to_num(env.unwrapped.batch.tumour_np[0][: len(legal)])[legal] > 0
        first = None
        for agent, s in zip(agents, stats, strict=True):
            agent.reset()
            logits = agent.logits(obs)[legal].astype(np.float64)
            p = torch.softmax(torch.as_tensor(logits), 0)
            s["entropy"].append(float(-(p * torch.log(p.clamp_min(1e-300))).sum()) / math.log(len(logits)))
            s["std"].append(float(logits.std()))
            if 0 < tumour.sum() < len(tumour):
                s["auc"].append(auc(logits, tumour))
            first = ranks(logits) if first is None else first
            s["rho"].append(float(np.corrcoef(first, ranks(logits))[0, 1]))
    env.close()
    return [{k: float(np.mean(v)) if v else float("nan") for k, v in s.items()} for s in stats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="*", help="policy folders (policy.json + policy.safetensors)")
    parser.add_argument("--init", action="append", default=[], help="RECIPE:SEED:BUDGET, an untrained policy")
    parser.add_argument("--budget", type=float, default=0.1, help="the environment's budget (default 0.1)")
    parser.add_argument("--slides", type=int, default=60, help="first N test slides (default 60)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names, agents = [], []
    for spec in args.init:
        recipe, seed, budget = spec.split(":")
        names.append(f"untrained {recipe} seed {seed}")
        agents.append(initial_policy(recipe, int(seed), float(budget)))
    for path in args.policies:
        names.append(path)
        agents.append(load_policy(path))
    if not agents:
        parser.error("give at least one policy folder or --init")
    width = max(len(n) for n in names)
    print(f"{'policy':{width}s}  entropy  logit std  tumour AUC  rho vs first")
    for name, s in zip(names, logits_at_s0(agents, args.budget, args.slides), strict=True):
        print(f"{name:{width}s}  {s['entropy']:7.5f}  {s['std']:9.4f}  {s['auc']:10.3f}  {s['rho']:12.3f}")


if __name__ == "__main__":
    main()
