"""How many samples does a policy gradient need to find tumour on synth-c16? (a diagnostic, no SB3)

PPO's actor is a gated-attention scorer over the standardised low-res rows, a softmax over patches.
This script trains exactly that scorer (``GatedAttention(d, hidden)``, rows of each slide
standardised as :func:`wsigym.agents.policy.standardise_state` does) with plain REINFORCE on the
*initial* state of training slides: sample a patch from the current policy, reward 1 if it holds
tumour (the environment's ``hit_tumour``), advantage = reward minus the minibatch mean (normalised),
Adam. It prints the sampled hit rate and the test patch AUC as samples accumulate.

``--block K`` draws K consecutive samples from the same slide, as an episode does (a 10% episode on
synth-c16 is ~130 zooms of one slide); ``--block 1`` draws every sample from a fresh slide. The
comparison shows why the PPO recipe runs many environments with short rollouts.

It uses the ground truth as reward, so it bounds how fast the policy class can learn, not what PPO
reaches with the HAFED reward (see ``reward_information.py`` for that signal).

Run from the repository root (about 1 minute per setting on one CPU thread)::

    .venv/bin/python examples/policy_gradient_probe.py --block 1 16 130
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wsigym.data.synth.dataset import SynthC16
from zoo.metrics import _binary_auc
from zoo.nn import GatedAttention


def standardised_slides(dataset: SynthC16, ids: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows (N, d), any_tumour (N,))`` per slide, rows centred and scaled to unit RMS per slide."""
    out = []
    for slide_id in ids:
        bag = dataset.load(slide_id, hr=False)
        rows = torch.from_numpy(np.asarray(bag.features, dtype=np.float32))
        rows = rows - rows.mean(0)
        out.append(
            (rows / rows.square().mean().sqrt(), torch.from_numpy(np.asarray(bag.tumour_fraction) > 0))
        )
    return out


def train(
    slides: list[tuple[torch.Tensor, torch.Tensor]],
    test: tuple[torch.Tensor, np.ndarray],
    block: int,
    samples: int,
    hidden: int,
    lr: float,
    batch: int,
    seed: int,
) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scorer = GatedAttention(slides[0][0].shape[1], hidden)
    optimiser = torch.optim.Adam(scorer.parameters(), lr=lr)
    start, seen, hits, report = time.perf_counter(), 0, 0.0, 1024
    rows, tumour = slides[0]
    while seen < samples:
        rewards, log_probs = [], []
        for j in range(batch):
            if (seen + j) % block == 0:
                rows, tumour = slides[rng.integers(len(slides))]
            logits = scorer(rows)[0]
            probs = torch.softmax(logits.detach().double(), 0).numpy()
            action = int(rng.choice(len(probs), p=probs / probs.sum()))
            rewards.append(float(tumour[action]))
            log_probs.append(torch.log_softmax(logits, 0)[action])
        r = torch.tensor(rewards)
        advantage = (r - r.mean()) / (r.std() + 1e-8)
        optimiser.zero_grad()
        (-(advantage * torch.stack(log_probs)).mean()).backward()
        optimiser.step()
        seen += batch
        hits += float(r.sum())
        if seen >= report:
            with torch.no_grad():
                scores = scorer(test[0])[0].numpy()
            print(
                f"block {block:3d}: {seen:6d} samples, sampled hit rate {hits / seen:.3f}, "
                f"test patch AUC {_binary_auc(scores, test[1]):.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            report *= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, nargs="+", default=[1, 16, 130])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--train-slides", type=int, default=120)
    parser.add_argument("--test-slides", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset = SynthC16(progress=False)
    train_ids = dataset.split("train")[: args.train_slides]
    raw = [np.asarray(dataset.load(i, hr=False).features, dtype=np.float64) for i in train_ids]
    print(
        "why standardise: mean norm of a low-res row "
        f"{np.mean([np.linalg.norm(f, axis=1).mean() for f in raw]):.2f}, "
        f"of its slide's mean row {np.mean([np.linalg.norm(f.mean(0)) for f in raw]):.2f}"
    )
    slides = standardised_slides(dataset, train_ids)
    test = standardised_slides(dataset, dataset.split("test")[: args.test_slides])
    test_rows = torch.cat([rows for rows, _ in test])
    test_tumour = torch.cat([t for _, t in test]).numpy()
    print(
        f"{len(slides)} training slides; test: {len(test_tumour)} patches, {test_tumour.mean():.2%} with tumour"
    )
    for block in args.block:
        train(
            slides, (test_rows, test_tumour), block, args.samples, args.hidden, args.lr, args.batch, args.seed
        )


if __name__ == "__main__":
    main()
