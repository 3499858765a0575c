"""ASMIL on synth-c16 with its queries initialised at the reference's std 1e-6 and at 1.0.

The measurement behind ``ASMILConfig.query_init_std`` (see ``zoo/models/asmil.py`` and the ASMIL card):
both runs read every high-res child (``view="hr"``), train on the first ``--slides`` training slides
for ``--epochs`` epochs with the same seed, and print the validation AUC after every epoch.

Run from the repository root (about 3 minutes on one CPU thread)::

    .venv/bin/python examples/asmil_query_init.py
"""

from __future__ import annotations

import argparse

import torch

import zoo
from wsigym.data.synth.dataset import SynthC16
from zoo.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stds", type=float, nargs="+", default=[1e-6, 1.0])
    parser.add_argument("--slides", type=int, default=80, help="training slides (the first of the split)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--anchor", action="store_true", help="keep the anchor loss and token dropping on")
    args = parser.parse_args()

    dataset = SynthC16(progress=False)
    extra = {} if args.anchor else {"consistency_weight": 0.0, "token_drop": 0, "dropout": 0.0}
    print(
        f"ASMIL view=hr, {args.slides} training slides, {args.epochs} epochs, lr {args.lr}, {extra or 'full'}"
    )
    for std in args.stds:
        torch.manual_seed(0)
        model = zoo.create_model("asmil", in_dim=dataset.config.dim, view="hr", query_init_std=std, **extra)
        result = fit(model, dataset, epochs=args.epochs, lr=args.lr, max_slides=args.slides, progress=False)
        aucs = " ".join(f"{h.get('val_auc', float('nan')):.3f}" for h in result.history)
        print(f"query_init_std {std:g}: validation AUC per epoch {aucs}")


if __name__ == "__main__":
    main()
