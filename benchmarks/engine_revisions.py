"""The zoom engine's speed at this working tree vs at a git revision, interleaved in one run.

For engine changes that have no switch to compare within one tree. The baseline revision is checked out into
a temporary ``git worktree``; each measurement runs in a fresh process with ``PYTHONPATH`` set to one tree,
alternating baseline and current ``--repeats`` times (the median of each is kept, so a noisy machine moves
both). Workloads on synth-c16's train split, random legal zooms from a seeded generator:

- ``single``: ``gym.make("WSIZoom-v0")`` with its defaults (copied observations) but the update rule, whole
  episodes on the first ``--slides`` slides at ``--budget``;
- ``vector``: the vector env with ``--num-envs`` environments and no observation built (what the structured
  PPO learner steps), ``--vector-steps`` vector steps after 5 warm-up steps.

Prints milliseconds per environment step, the ratio baseline / current, and whether every run of both trees
gave the same rewards, bit for bit (a digest of all of them): an engine change meant to be exact shows "yes".

Each workload runs once per update rule of ``--updates`` (default ``tsu``, the environments' default).

Run: ``.venv/bin/python benchmarks/engine_revisions.py --baseline 3d3b6d6 [--repeats 3] [--threads 1]
[--updates tsu tsu-lowres global none]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKLOAD = r"""
import hashlib, json, sys, time
import numpy as np, torch, gymnasium as gym
import wsigym
from wsigym.envs.vector import WSIZoomVectorEnv
kind, threads, slides, budget, num_envs, vector_steps, update = sys.argv[1:8]
torch.set_num_threads(int(threads))
rng = np.random.default_rng(0)
rewards = []
if kind == "single":
    env = gym.make("WSIZoom-v0", split="train", budget=float(budget), progress=False, update=update)
    seconds = steps = 0
    for slide in range(int(slides)):
        _, info = env.reset(seed=slide, options={"slide_index": slide})
        done = False
        t0 = time.perf_counter()
        while not done:
            _, r, term, trunc, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
            done, steps = term or trunc, steps + 1
            rewards.append(r)
        seconds += time.perf_counter() - t0
else:
    b = int(num_envs)
    vec = WSIZoomVectorEnv(num_envs=b, split="train", budget=float(budget), progress=False, update=update)
    vec.reset(seed=0)
    vec.observe = False
    engine = vec.batch
    seconds = steps = 0
    for t in range(5 + int(vector_steps)):
        actions = np.array([int(rng.choice(np.flatnonzero(m))) for m in engine.action_masks()])
        t0 = time.perf_counter()
        rewards.extend(vec.step(actions)[1])
        if t >= 5:
            seconds, steps = seconds + time.perf_counter() - t0, steps + b
digest = hashlib.sha256(np.asarray(rewards, dtype=np.float64).tobytes()).hexdigest()
print(json.dumps({"ms": 1e3 * seconds / steps, "steps": steps, "rewards": digest}))
"""


def measure(tree: Path, kind: str, update: str, args: argparse.Namespace) -> tuple[float, str]:
    """Milliseconds per environment step and the digest of every reward, in a fresh process on ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [kind, args.threads, args.slides, args.budget, args.num_envs, args.vector_steps, update]
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD, *map(str, argv)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["ms"]), result["rewards"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slides", type=int, default=12)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--vector-steps", type=int, default=150)
    parser.add_argument(
        "--updates", nargs="+", default=["tsu"], help="update rules to run (tsu, tsu-lowres, global, none)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(base), args.baseline], cwd=ROOT, check=True
        )
        try:
            times: dict[tuple[str, str, str], list[float]] = {}
            rewards: dict[tuple[str, str, str], set[str]] = {}
            for _ in range(args.repeats):
                for update in args.updates:
                    for kind in ("single", "vector"):
                        for name, tree in (("baseline", base), ("current", ROOT)):
                            ms, digest = measure(tree, kind, update, args)
                            times.setdefault((update, kind, name), []).append(ms)
                            rewards.setdefault((update, kind, name), set()).add(digest)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=True)
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True
    )
    print(
        f"synth-c16 train, budget {args.budget}, {args.threads} thread(s), median of {args.repeats} interleaved runs; "
        f"baseline {rev.stdout.strip()}, current = this working tree"
    )
    print("| workload | baseline ms/env-step | current ms/env-step | baseline / current | same rewards |")
    print("|---|---:|---:|---:|---|")
    labels = {
        "single": f"WSIZoom-v0 (gym.make defaults), {args.slides} whole episodes",
        "vector": f"vector env, {args.num_envs} envs, no observation, {args.vector_steps} steps",
    }
    for update in args.updates:
        for kind, label in labels.items():
            key = (update, kind)
            b, c = statistics.median(times[(*key, "baseline")]), statistics.median(times[(*key, "current")])
            same = len(rewards[(*key, "baseline")] | rewards[(*key, "current")]) == 1
            print(
                f"| {label}, update={update} | {b:.3f} | {c:.3f} | {b / c:.2f}x | {'yes' if same else 'NO'} |"
            )


if __name__ == "__main__":
    main()
