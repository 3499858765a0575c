"""How much a per-patch linear scorer of the low-res state can find on synth-c16 (a diagnostic, not an agent).

PPO's actor scores every patch with one shared network. This script asks what such a scorer could
reach if it knew where tumour is: a logistic probe is fitted on the low-res rows ``Z`` of training
slides against the ground truth (tumour fraction > ``--threshold``; rows centred per slide, which
removes the stain offset), then

- its patch-level AUC on the test slides is printed, and
- a greedy agent that zooms the highest-scoring legal patch is run through the protocol
  (:func:`wsigym.evaluate.run_split`) next to the random baseline on the same test slides.

It uses privileged training labels, so it is a yardstick for what a learned per-patch policy could get,
not a result for the benchmark table.

Run from the repository root (about 5 minutes on one CPU thread)::

    .venv/bin/python examples/lowres_probe.py --slides 60
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.baselines import make_baseline
from wsigym.data.synth.dataset import SynthC16
from wsigym.evaluate import run_split


def centred_rows(dataset: SynthC16, ids: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-slide centred low-res rows ``(M, d)`` and tumour labels ``(M,)`` of slides ``ids``."""
    rows, labels = [], []
    for slide_id in ids:
        bag = dataset.load(slide_id, hr=False)
        rows.append(bag.features - bag.features.mean(0))
        labels.append(np.asarray(bag.tumour_fraction) > threshold)
    return np.concatenate(rows).astype(np.float32), np.concatenate(labels)


def fit_probe(x: np.ndarray, y: np.ndarray, steps: int = 300, seed: int = 0) -> np.ndarray:
    """Class-balanced logistic regression (full-batch Adam); returns the weight vector ``(d,)``."""
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([w, b], lr=1e-2)
    pos_weight = (1 - yt.mean()) / yt.mean().clamp_min(1e-6)
    for _ in range(steps):
        optimiser.zero_grad()
        F.binary_cross_entropy_with_logits(xt @ w + b, yt, pos_weight=pos_weight).backward()
        optimiser.step()
    return w.detach().numpy()


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC by the rank-sum formula."""
    ranks = np.argsort(np.argsort(scores)) + 1
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-slides", type=int, default=120)
    parser.add_argument("--slides", type=int, default=60, help="test slides for the agents")
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.2])
    args = parser.parse_args()

    dataset = SynthC16(progress=False)
    x, y = centred_rows(dataset, dataset.split("train")[: args.train_slides], args.threshold)
    w = fit_probe(x, y)
    test_ids = dataset.split("test")[: args.slides]
    xt, yt = centred_rows(dataset, test_ids, args.threshold)
    print(f"probe: {len(y)} training rows ({y.mean():.2%} tumour); test patch AUC {auc(yt, xt @ w):.3f}")

    def probe_agent(obs: dict, info: dict) -> int:
        scores = obs["state"].reshape(-1, w.shape[0]) @ w
        return int(np.argmax(np.where(obs["action_mask"].astype(bool), scores, -np.inf)))

    for budget in args.budgets:
        env = gym.make("WSIZoom-v0", dataset="synth-c16", split="test", budget=budget, progress=False)
        ids = env.unwrapped.slide_ids[: args.slides]
        for name, agent in (("probe", probe_agent), ("random", make_baseline("random"))):
            m = run_split(agent, env, ids)
            print(
                f"{name:7s} @ {budget:.0%} on {len(ids)} test slides: accuracy {m['accuracy']:.3f}, "
                f"AUC {m['auc']:.3f}, tumour hits {m['tumour_hits']:.3f}"
            )
        env.close()


if __name__ == "__main__":
    main()
