"""Rows the zoom engine holds on a real split: its row capacity ``R`` against the dataset's largest slide ``P``.

The engine (:mod:`wsigym.envs.zoom_batch`) holds ``R`` rows per environment, the largest of its ``B``
current slides rounded up (grown on load, shrunk when it needs at most half). Before, every
``d``-wide tensor held ``P`` rows, ``P`` the dataset's largest slide. This script steps the vector env
with a random masked agent, as the structured PPO path does (``observe=False``, so no observation
buffer), and reports per step ``R`` and the bytes of the engine's row-indexed tensors (state, ``Z``,
norms, masks, the classifier's row logits), next to the bytes the same tensors take at ``P`` rows
(computed from their shapes and dtypes), and the mean real rows of the current slides (what a
packed layout would hold). Peak RSS of the process is printed too.

Run: ``python benchmarks/engine_rows.py`` (``--help``: dataset, split, envs, steps).
"""

from __future__ import annotations

import argparse
import resource

import numpy as np
import torch

from wsigym.envs.vector import WSIZoomVectorEnv


def row_bytes(engine, rows: int) -> int:
    """Bytes of the engine's row-indexed tensors if they held ``rows`` rows."""
    t = engine.tensors
    tensors = [t.state, t.z, t.z_norm, t.valid, t.visited, t.updated, engine.classifier.row_logits]
    return sum(x.numel() // max(1, x.shape[1]) * rows * x.element_size() for x in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synth-c16")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2000, help="vector steps")
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vec = WSIZoomVectorEnv(
        num_envs=args.num_envs, dataset=args.dataset, split=args.split, budget=args.budget, progress=True
    )
    engine = vec.batch
    vec.observe = False
    vec.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    rows, real = [], []
    for _ in range(args.steps):
        masks = vec.action_masks()
        vec.step((rng.random(masks.shape) * masks).argmax(axis=1))
        rows.append(engine.rows)
        real.append(engine.n.mean())
    rows_arr = np.asarray(rows)
    p = engine.max_patches
    held, padded = row_bytes(engine, int(rows_arr.mean())), row_bytes(engine, p)
    n = np.asarray(vec.source.n_list)
    print(
        f"{args.dataset}/{args.split}: {len(n)} slides, N median {int(np.median(n))}, max {n.max()}; P = {p}"
    )
    print(f"B = {args.num_envs}, {args.steps} vector steps, random masked agent, budget {args.budget}")
    print(
        f"rows held R: mean {rows_arr.mean():.0f}, median {int(np.median(rows_arr))}, max {rows_arr.max()}; "
        f"the current slides' own N: mean {np.mean(real):.0f}"
    )
    print(
        f"row-indexed engine tensors: {held / 2**20:.1f} MiB at the mean R, {padded / 2**20:.1f} MiB at P "
        f"({held / padded:.2f} of it); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
    )


if __name__ == "__main__":
    main()
