"""The TSU's scan over pending rows vs over every row: ``WSIZoom-v0`` steps/s on synth-c16, whole episodes.

Only a row never updated can enter the TSU's new set, so the engine scans only those rows
(:class:`wsigym.envs.state_update.PendingRows`, its CPU path). This runs the same whole episodes (random
legal zooms of one seeded generator, the first ``--slides`` training slides, budget ``--budget``) twice,
alternating slide by slide: with the pending scan and with the full scan of every row
(``tensors.pending = None``, the engine's path before). It checks that both give the same rewards, and prints
steps/s, their ratio, the fraction of a slide's rows the pending scan read per step and the fraction of zooms
that landed on an already updated patch, on average over the slides.

Run: ``.venv/bin/python benchmarks/pending_scan.py [--slides 12] [--budget 0.2] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import wsigym  # noqa: F401  (registers the environments)


def episode(
    env: gym.Env, slide: int, seed: int, full_scan: bool
) -> tuple[float, int, list[float], float, float]:
    """Seconds, steps, rewards, the mean fraction of rows scanned and the fraction of zooms on an already
    updated patch, of one whole episode."""
    u = env.unwrapped
    _, info = env.reset(seed=seed, options={"slide_index": slide})
    batch = u.batch
    pending = batch.tensors.pending
    if full_scan:
        batch.tensors.pending = None
    rng = np.random.default_rng(seed)
    rewards, scanned, on_updated = [], [], []
    n = int(batch.n[0])
    done = False
    t0 = time.perf_counter()
    while not done:
        action = int(rng.choice(np.flatnonzero(info["action_mask"])))
        on_updated.append(bool(batch.updated_np[0, action]))
        _, r, term, trunc, info = env.step(action)
        rewards.append(r)
        done = term or trunc
        if not full_scan:
            rows = pending._rows[0]
            scanned.append(n if rows is None else len(rows))
    seconds = time.perf_counter() - t0
    batch.tensors.pending = pending
    fraction = float(np.mean(scanned)) / n if scanned else 1.0
    return seconds, len(rewards), rewards, fraction, float(np.mean(on_updated))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=12)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = gym.make("WSIZoom-v0", split="train", budget=args.budget, progress=False)
    assert env.unwrapped.batch.tensors.pending is not None, "the pending scan is the engine's CPU path"
    totals = {False: [0.0, 0], True: [0.0, 0]}
    fractions, on_updated = [], []
    for slide in range(args.slides):
        runs = {}
        for full_scan in (slide % 2 == 0, slide % 2 == 1):  # alternate which goes first
            seconds, steps, rewards, fraction, updated = episode(env, slide, seed=slide, full_scan=full_scan)
            totals[full_scan][0] += seconds
            totals[full_scan][1] += steps
            runs[full_scan] = rewards
            if not full_scan:
                fractions.append(fraction)
                on_updated.append(updated)
        np.testing.assert_allclose(runs[False], runs[True], atol=1e-5, err_msg=f"slide {slide}")
    full = totals[True][1] / totals[True][0]
    pending = totals[False][1] / totals[False][0]
    print(
        f"synth-c16 train, first {args.slides} slides, budget {args.budget}, {totals[True][1]} steps each, "
        f"{args.threads} thread(s), torch {torch.__version__}; same rewards"
    )
    print("| scan | steps/s | rows scanned per step |")
    print("|---|---:|---:|")
    print(f"| every row (before) | {full:.1f} | 1.00 |")
    print(f"| pending rows | {pending:.1f} | {np.mean(fractions):.2f} |")
    print(
        f"pending / full = {pending / full:.2f}x; zooms on an already updated patch: {np.mean(on_updated):.2f}"
    )


if __name__ == "__main__":
    main()
