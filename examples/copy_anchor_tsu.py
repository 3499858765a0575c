"""Write the "copy V(a)" state update of docs/synth-c16.md: every TSU-updated row takes the zoomed patch's
high-res row, ``f_S([V(a), S(a), S(i)]) = V(a)``.

It is a residual ``f_S`` (``V(a) + MLP(x)``, :mod:`zoo.models.tsu`) whose last layer is zero, with the
similarity settings (``tau``, signed or absolute cosine) of a trained TSU, so the same rows are updated
and only their new values differ. Score it like any TSU:

    python examples/copy_anchor_tsu.py --like runs/tsu-res-synth-c16 --out runs/tsu-copy-synth-c16
    wsigym --threads 1 synth calibrate --part state-update --tsu runs/tsu-copy-synth-c16
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace

import torch

import zoo
from zoo.model_folder import save_pretrained


def copy_anchor_tsu(like: str) -> torch.nn.Module:
    """A residual TSU with ``like``'s config and a zero last layer: ``f_S(x) = V(a)`` exactly."""
    trained = zoo.load(like)
    config = replace(trained.config, residual=True)
    model = zoo.create_model("tsu", **{k: v for k, v in asdict(config).items() if k != "architecture"})
    with torch.no_grad():
        model.mlp[2].weight.zero_()
        model.mlp[2].bias.zero_()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--like", default="tsu-synth-c16", help="TSU whose similarity settings to keep")
    parser.add_argument("--out", required=True, help="folder to write (config.json + model.safetensors)")
    args = parser.parse_args()
    model = copy_anchor_tsu(args.like)
    save_pretrained(model, args.out, training={"recipe": f"copy V(a): {args.like}'s config, last layer zero"})
    print(f"wrote {args.out}: f_S(x) = V(a), tau {model.config.tau}")


if __name__ == "__main__":
    main()
