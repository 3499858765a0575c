"""How much does the reward of N zooms tell about where tumour is? (a diagnostic for PPO on synth-c16)

PPO learns its per-patch scorer only from rewards. This script bounds what any learner could extract
from them. It zooms uniformly at random on training slides (``WSIZoom-v0``, budget 10%) with the reward
rule ``--reward``:

- ``delta_ce`` (default): the change of HAFED's cross-entropy caused by that one zoom;
- ``delta_margin``: the change of HAFED's log-odds of the true class;
- ``evidence``: HAFED's probability of the label on the zoomed patch's high-res row alone, minus its
  slide mean.

It keeps each zoomed patch's low-res row (centred per slide) with its reward, and prints the mean
reward by slide class and kind of zoomed patch (tumour, tumour-mimicking benign tissue, other). Then it
fits a ridge regression row -> reward on the first N zooms, on the raw rewards and on the rewards
centred per episode (what a learner with a per-slide baseline regresses on). Its patch-level AUC against
the ground truth on test slides says how well "where the reward was" generalises to "where tumour is"
(a test patch counts as tumour when its tumour fraction is above ``--threshold``, as in
``lowres_probe.py``). Next to it, the same ridge on the same N rows fitted to the ground truth of those
zooms (``info["hit_tumour"]``: any tumour in the patch) shows what the same zooms would teach with full
supervision.

Run from the repository root (about 2 minutes on one CPU thread)::

    .venv/bin/python examples/reward_information.py --steps 32768
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import wsigym  # noqa: F401  (registers the environments)
from wsigym.data.synth.dataset import SynthC16
from zoo.metrics import _binary_auc


def random_zooms(steps: int, budget: float, reward: str, seed: int) -> dict[str, np.ndarray]:
    """``steps`` random zooms on training slides: centred low-res rows, rewards, ground-truth hits, and
    each zoom's slide label and whether the patch holds tumour-mimicking tissue."""
    env = gym.make(
        "WSIZoom-v0", dataset="synth-c16", split="train", budget=budget, reward=reward, progress=False
    )
    dataset = SynthC16(progress=False)
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"rows": [], "rewards": [], "hits": [], "labels": [], "mimic": [], "episode": []}
    episode = 0
    while len(out["rewards"]) < steps:
        obs, info = env.reset(seed=seed + episode)
        episode += 1
        n = int(obs["patch_mask"].sum())
        lowres = obs["state"].reshape(len(obs["patch_mask"]), -1)[:n].copy()
        lowres -= lowres.mean(0)
        mimic = dataset.layout(info["slide_id"]).mimic.any(axis=1)
        done = False
        while not done and len(out["rewards"]) < steps:
            action = int(rng.choice(np.flatnonzero(obs["action_mask"])))
            obs, r, terminated, truncated, step_info = env.step(action)
            done = terminated or truncated
            for key, value in zip(
                out,
                (lowres[action], r, step_info["hit_tumour"], info["label"], mimic[action], episode),
                strict=True,
            ):
                out[key].append(value)
    env.close()
    return {k: np.asarray(v, dtype=np.float64 if k == "rewards" else None) for k, v in out.items()}


def reward_by_kind(zooms: dict[str, np.ndarray]) -> None:
    """Print the mean reward of the zooms by slide class and kind of zoomed patch."""
    label, hit, mimic, r = zooms["labels"], zooms["hits"], zooms["mimic"] & ~zooms["hits"], zooms["rewards"]
    other = ~hit & ~mimic
    for name, sel in (
        ("tumour slide, tumour patch", (label == 1) & hit),
        ("tumour slide, mimic patch", (label == 1) & mimic),
        ("tumour slide, other patch", (label == 1) & other),
        ("benign slide, mimic patch", (label == 0) & mimic),
        ("benign slide, other patch", (label == 0) & other),
    ):
        rs = r[sel]
        print(
            f"  {name:27s} {len(rs):6d} zooms: mean reward {rs.mean():+.4f}, sum {rs.sum():+8.1f}, "
            f"|reward| > 0.05 for {np.mean(np.abs(rs) > 0.05):.1%}"
        )


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """``argmin_w |x w - y|^2 + lam |w|^2``."""
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32768, help="random zooms in all")
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--reward", choices=("delta_ce", "delta_margin", "evidence"), default="delta_ce")
    parser.add_argument("--test-slides", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.25, help="tumour fraction of a 'tumour' patch")
    parser.add_argument("--lam", type=float, default=10.0, help="ridge penalty")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    zooms = random_zooms(args.steps, args.budget, args.reward, args.seed)
    x, r, hit = zooms["rows"], zooms["rewards"], zooms["hits"]
    print(
        f"{len(r)} random zooms ({args.reward}) in {time.perf_counter() - t0:.0f} s; {int(hit.sum())} hit tumour"
    )
    reward_by_kind(zooms)

    dataset = SynthC16(progress=False)
    test_rows, test_labels = [], []
    for slide_id in dataset.split("test")[: args.test_slides]:
        bag = dataset.load(slide_id, hr=False)
        test_rows.append(bag.features - bag.features.mean(0))
        test_labels.append(np.asarray(bag.tumour_fraction) > args.threshold)
    xt, yt = np.concatenate(test_rows), np.concatenate(test_labels)
    print(f"test: {len(yt)} patches of {args.test_slides} slides, {yt.mean():.2%} tumour")

    # rewards minus their episode's mean: what a learner with a per-slide baseline regresses on
    episode = zooms["episode"].astype(np.int64)
    sums, counts = np.bincount(episode, weights=r), np.bincount(episode)
    centred = r - (sums / np.maximum(counts, 1))[episode]
    n = 1024
    while n <= len(r):
        informative = int((np.abs(r[:n]) > 0.05).sum())
        auc_reward = _binary_auc(xt @ ridge(x[:n], r[:n], args.lam), yt)
        auc_centred = _binary_auc(xt @ ridge(x[:n], centred[:n], args.lam), yt)
        auc_label = _binary_auc(xt @ ridge(x[:n], hit[:n].astype(np.float64), args.lam), yt)
        print(
            f"N = {n:6d} zooms ({informative:4d} with |reward| > 0.05, {int(hit[:n].sum()):4d} tumour hits): "
            f"patch AUC from rewards {auc_reward:.3f} (centred per slide {auc_centred:.3f}), "
            f"from ground truth {auc_label:.3f}"
        )
        n *= 2


if __name__ == "__main__":
    main()
