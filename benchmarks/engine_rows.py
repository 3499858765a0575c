"""Rows the zoom engine holds on a real split: its packed rows against the padded layouts before.

The engine (:mod:`wsigym.envs.zoom_batch`) packs the rows of its ``B`` current slides into one buffer
(:mod:`wsigym.envs.row_slots`: a slot per environment, rounded up to 64 rows, with headroom for new
slides) and keeps no copy of ``Z`` (each environment reads its slide's rows from the source). Before,
it held ``R`` rows per environment, the largest current slide rounded up, for the state and a copy of
``Z``; before that ``P`` rows, the dataset's largest slide. This script steps the vector env with a
random masked agent, as the structured PPO path does (``observe=False``, so no observation buffer),
and reports the engine's row-indexed bytes (state, norms, flags, slot owners, the classifier's row
logits) per step, next to what the two padded layouts would hold for the same slides (computed from the
same tensors' widths and dtypes, plus the ``Z`` copy and validity mask they kept), and the real rows.
Peak RSS of the process is printed too.

Run: ``python benchmarks/engine_rows.py`` (``--help``: dataset, split, envs, steps).
"""

from __future__ import annotations

import argparse
import resource

import numpy as np
import torch

from wsigym.envs.row_slots import ROW_STEP
from wsigym.envs.vector import WSIZoomVectorEnv


def bytes_per_row(engine) -> tuple[int, int]:
    """Bytes per packed row now, and per row of the padded layouts (which also held ``Z`` and a mask)."""
    t = engine.tensors
    per_row = [t.state, t.z_norm, t.visited, t.updated, t.slots.owner, engine.classifier.row_logits]
    now = sum(x[:1].numel() * x.element_size() for x in per_row)
    return now, now - t.slots.owner.element_size() + t.state[:1].numel() * t.state.element_size() + 1


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
    held, padded, real = [], [], []
    b = args.num_envs
    for _ in range(args.steps):
        masks = vec.action_masks()
        vec.step((rng.random(masks.shape) * masks).argmax(axis=1))
        held.append(engine.tensors.slots.capacity)
        padded.append(b * (-(-int(engine.n.max()) // ROW_STEP) * ROW_STEP))
        real.append(int(engine.n.sum()))
    now, before = bytes_per_row(engine)
    p = engine.max_patches
    n = np.asarray(vec.source.n_list)
    mib = 2**20
    print(
        f"{args.dataset}/{args.split}: {len(n)} slides, N median {int(np.median(n))}, max {n.max()}; P = {p}"
    )
    print(f"B = {b}, {args.steps} vector steps, random masked agent, budget {args.budget}")
    print(
        f"rows: real (sum of the current slides' N) mean {np.mean(real):.0f}; packed buffer mean "
        f"{np.mean(held):.0f}, max {max(held)} ({np.mean(held) / np.mean(real):.2f} of real); padded to the "
        f"largest current slide {np.mean(padded):.0f}; padded to P {b * p}"
    )
    print(
        f"row-indexed engine tensors: packed {np.mean(held) * now / mib:.1f} MiB (max {max(held) * now / mib:.1f}); "
        f"padded to the largest current slide {np.mean(padded) * before / mib:.1f} MiB; padded to P "
        f"{b * p * before / mib:.1f} MiB; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
    )


if __name__ == "__main__":
    main()
