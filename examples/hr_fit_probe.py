"""Does a MIL family fit synth-c16's high-res children? Training cross-entropy per epoch on a small subset.

A quick probe before an hours-long run: it trains ``ARCH`` with ``view="hr"`` (every high-res child is an
instance, ~18k per slide) on ``--slides`` training slides of synth-c16 (a seeded subset; the bags stay in
memory), one slide per step, AdamW at ``--lr`` (constant, weight decay 1e-5), and prints the mean training
cross-entropy per epoch, split by tumour and normal slides. A family that does not learn stays near the
class-prior cross-entropy (~0.66 at synth-c16's 38% tumour slides); the probe says nothing about
generalisation (no validation).

Run from the repository root (SemaMIL: ~6 s per slide per epoch on one thread; ABMIL: ~0.6 s)::

    .venv/bin/python examples/hr_fit_probe.py abmil --slides 24 --epochs 4
    .venv/bin/python examples/hr_fit_probe.py semamil --slides 24 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from wsigym.data.formats import open_dataset
from zoo.batch import collate
from zoo.registry import create_model


def probe(arch: str, slides: int, epochs: int, lr: float, seed: int = 0) -> list[dict[str, float]]:
    """Train ``arch`` (``view="hr"``) on a subset of synth-c16's training slides; per-epoch training CE."""
    dataset = open_dataset("synth-c16")
    ids = dataset.split("train", 0)
    keep = np.sort(np.random.default_rng(seed).choice(len(ids), slides, replace=False))
    ids = [ids[i] for i in keep]
    in_dim = dataset.load(ids[0], hr=False).dim  # as zoo.train does: from the first slide's features
    torch.manual_seed(seed)
    model = create_model(arch, in_dim=in_dim, num_classes=len(dataset.class_names), view="hr")
    model.prepare_for(dataset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    bags: dict[str, object] = {}
    start, history = time.perf_counter(), []
    for epoch in range(epochs):
        model.train()
        losses, labels = [], []
        for i in torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed + epoch)).tolist():
            if ids[i] not in bags:
                bags[ids[i]] = dataset.load(ids[i], hr=True)
            batch = collate([bags[ids[i]]], hr=True)
            loss = model.loss(batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            labels.append(int(batch["label"][0]))
        ce, y = np.asarray(losses), np.asarray(labels)
        history.append(
            {
                "epoch": epoch,
                "ce": float(ce.mean()),
                "ce_tumour": float(ce[y == 1].mean()),
                "ce_normal": float(ce[y == 0].mean()),
                "seconds": time.perf_counter() - start,
            }
        )
        print(json.dumps({"arch": arch, **{k: round(v, 3) for k, v in history[-1].items()}}), flush=True)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", help="a zoo family with a high-res view (abmil, acmil, semamil, ...)")
    parser.add_argument("--slides", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    probe(args.arch, args.slides, args.epochs, args.lr, args.seed)


if __name__ == "__main__":
    main()
