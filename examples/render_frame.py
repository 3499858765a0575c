"""Render one ``WSIZoom-v0`` frame to ``examples/wsizoom_frame.png``.

A tumour slide of ``synth-c16-tiny`` (test split), zoomed ``T = ceil(0.2 N)`` times in decreasing
order of HAFED's attention. Uses the shipped ``hafed-synth-c16`` / ``tsu-synth-c16`` weights.

Run: ``.venv/bin/python examples/render_frame.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
from PIL import Image

import wsigym  # noqa: F401  (registers the environments)
import zoo
from wsigym.data.formats import open_dataset
from wsigym.io import atomic_write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("wsizoom_frame.png")))
    args = parser.parse_args()
    dataset = open_dataset("synth-c16-tiny")
    hafed, tsu, which = zoo.load("hafed-synth-c16"), zoo.load("tsu-synth-c16"), "shipped weights"
    env = gym.make("WSIZoom-v0", dataset=dataset, split="test", hafed=hafed, tsu=tsu, render_mode="rgb_array")
    ids = env.unwrapped.slide_ids
    tumour = [s for s in ids if dataset.label(s) == 1]
    _, info = env.reset(seed=0, options={"slide_id": (tumour or ids)[0]})
    done = False
    while not done:
        legal = np.flatnonzero(info["action_mask"])
        action = int(legal[np.argmax(env.unwrapped.attention()[legal])])
        _, _, term, trunc, info = env.step(action)
        done = term or trunc
    frame = env.render()
    out = atomic_write(args.out, lambda tmp: Image.fromarray(frame).save(tmp, format="PNG"))
    print(
        f"wrote {out} ({frame.shape[1]}x{frame.shape[0]}): slide {info['slide_id']} ({which}), "
        f"{info['zooms']} zooms, p(label) = {info['probability'][info['label']]:.3f}"
    )


if __name__ == "__main__":
    main()
