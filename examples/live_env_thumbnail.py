"""Write examples/live_env_thumbnail.png: one live ``WSIZoom-v0`` episode drawn on the real slide.

A synthetic pyramidal Aperio TIFF (12288 x 12288 px at 0.25 um/px = 40x, two tumour ellipses:
:func:`wsigym.slides.synthetic_slides.write_aperio_tiff`) goes through the live environment
(:mod:`wsigym.envs.live_source`): tissue + 5x grid at construction, ``Z`` encoded at reset, and
``T = ceil(0.2 N)`` zooms, each reading the 16 children of the patch at 20x from the TIFF, encoding
them and aggregating them with HAFED level 1. The zooms follow HAFED's attention (highest first, as
the agent-free baseline). ``render()`` draws the zoomed patches in order, the TSU-updated patches,
the ground-truth tumour patches and the current attention on the slide's thumbnail.

The encoder (timm ViT-Tiny/16 at 64 px), HAFED and the TSU are **randomly initialised** (seed 0;
nothing is downloaded), so the picture shows the mechanics of the live path, not a trained model's
choices. ``--slide PATH [--mpp X]`` renders a real slide instead (e.g. the CMU or TCGA slides).

Run: ``.venv/bin/python examples/live_env_thumbnail.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from PIL import Image

import wsigym  # noqa: F401  (registers the environments)
import zoo
from wsigym.envs.live_source import LiveSlides
from wsigym.slides.encoders import timm_encoder
from wsigym.slides.synthetic_slides import write_aperio_tiff

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "live_env_thumbnail.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--slide", type=Path, default=None, help="a real slide instead of the synthetic one")
    ap.add_argument("--mpp", type=float, default=None, help="mpp override for --slide")
    ap.add_argument("--budget", type=float, default=0.2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    encoder = timm_encoder("vit_tiny_patch16_224", img_size=64, name="vit_tiny_rand64")
    hafed = zoo.create_model("hafed", in_dim=encoder.dim).eval()
    tsu = zoo.create_model("tsu", in_dim=encoder.dim, tau=0.9).eval()
    with tempfile.TemporaryDirectory() as tmp:
        if args.slide is None:
            slide = write_aperio_tiff(Path(tmp) / "synthetic_tumour.svs", width=12288, height=12288, seed=3)
            sid = slide.path.stem
        else:
            slide, sid = args.slide, args.slide.stem
        live = LiveSlides([slide], {sid: "tumour"}, encoder, class_names=("normal", "tumour"), mpp=args.mpp)
        env = gym.make(
            "WSIZoom-v0",
            dataset=live,
            hafed=hafed,
            tsu=tsu,
            budget=args.budget,
            render_mode="rgb_array",
            progress=False,
        )
        _, info = env.reset(seed=0)
        hits, done = [], False
        while not done:
            attention = np.where(env.unwrapped.action_masks(), env.unwrapped.attention(), -np.inf)
            _, _, term, trunc, info = env.step(int(np.argmax(attention)))
            hits.append(info.get("hit_tumour"))
            done = term or trunc
        frame = env.render()
        src = env.unwrapped.source
        print(
            f"{sid}: N = {src.n_list[0]} patches, {info['zooms']} zooms (budget {args.budget:g}), "
            f"tumour hits {hits}, HAFED p(tumour) = {info['probability'][1]:.2f}; work: {src.counters}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # 256-colour palette: the slide texture makes a full-colour PNG ~1 MB
    Image.fromarray(frame).quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
