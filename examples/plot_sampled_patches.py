"""Write examples/sampled_patches.png: where agents zoom on one test slide of synth-c16.

Each panel is ``WSIZoom-v0``'s ``rgb_array`` render after a full episode (zoomed patches numbered in
order, TSU-updated patches, HAFED's attention and the ground-truth tumour outline). The title gives
the agent, its prediction and the fraction of zooms that hit tumour.

Run from the repository root::

    .venv/bin/python examples/plot_sampled_patches.py --policy runs/ppo-WSIZoom-v0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import wsigym  # noqa: F401
from wsigym.evaluate import as_agent

ROOT = Path(__file__).resolve().parent.parent


def episode(env: gym.Env, agent, slide_id: str) -> tuple:
    obs, info = env.reset(seed=0, options={"slide_id": slide_id})
    if hasattr(agent, "reset"):
        agent.reset(env.unwrapped, obs, info)
    hits = steps = 0
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(agent(obs, info))
        hits += int(info.get("hit_tumour", False))
        steps += 1
        done = terminated or truncated
    return env.render(), info, hits / max(steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=None, help="policy folder or registered name (panel 'ppo')")
    parser.add_argument("--agents", nargs="+", default=["attention-topk", "random", "oracle"])
    parser.add_argument("--dataset", default="synth-c16")
    parser.add_argument(
        "--slide", default=None, help="slide id (default: the smallest tumour slide of the split)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--out", default=str(ROOT / "examples" / "sampled_patches.png"))
    args = parser.parse_args()

    env = gym.make(
        "WSIZoom-v0", dataset=args.dataset, split=args.split, budget=args.budget, render_mode="rgb_array"
    )
    source = env.unwrapped.source
    slide = args.slide
    if slide is None:
        tumour = [k for k in range(len(source)) if int(source.labels[k]) == 1]
        slide = source.slide_ids[min(tumour, key=lambda k: source.n_list[k])]
    specs = ([args.policy] if args.policy else []) + list(args.agents)
    labels = (["ppo"] if args.policy else []) + list(args.agents)
    rows = (len(specs) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(16, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(specs) :]:
        ax.axis("off")
    for ax, spec, label in zip(axes.flat, specs, labels, strict=False):
        _, agent = as_agent(spec)
        frame, info, hit = episode(env, agent, slide)
        p = info["probability"][1]
        ax.imshow(frame)
        ax.set_title(f"{label}: P(tumour) = {p:.2f}, {info['zooms']} zooms, {hit:.0%} on tumour", fontsize=11)
        ax.axis("off")
    fig.suptitle(
        f"{args.dataset} {args.split} slide {slide} (label {info['label']}), budget {args.budget:.0%}"
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} (slide {slide})")


if __name__ == "__main__":
    main()
