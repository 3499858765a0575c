"""``wsigym env info|render|rollout``: inspect, draw and run the zoom environment.

- ``wsigym env info``: spaces, slides, patch counts and budgets of a split;
- ``wsigym env render --out frame.png``: run a few zooms with a simple policy and save the frame;
- ``wsigym env rollout --episodes 5``: run episodes and print return, zooms, prediction and tumour hits.

Policies (no learning): ``random`` (uniform over legal patches, seeded) or ``attention`` (the patch
HAFED attends most among the legal ones).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from wsigym.envs.option_flags import add_env_arguments, options_from_args
from wsigym.io import atomic_write

ENV_IDS = ("WSIZoom-v0", "WSIZoomGlobal-v0", "WSIZoomNoUpdate-v0")


def _add_env_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="WSIZoom-v0", choices=ENV_IDS, help="env id (picks the state update)")
    add_env_arguments(p.add_argument_group("environment (wsigym.envs.options.ZoomOptions)"))
    p.add_argument("--seed", type=int, default=0)


def make_env(args: argparse.Namespace, render_mode: str | None = None) -> Any:
    """``gym.make`` from the parsed arguments (the env flags of :mod:`wsigym.envs.option_flags`)."""
    import gymnasium as gym

    import wsigym  # noqa: F401  (registers the environments)

    return gym.make(args.env, options=options_from_args(args), render_mode=render_mode)


def policy_action(name: str, env: Any, info: dict[str, Any], rng: np.random.Generator) -> int:
    """A legal action of the ``random`` or ``attention`` policy."""
    legal = np.flatnonzero(info["action_mask"])
    if name == "attention":
        att = env.unwrapped.attention()
        return int(legal[np.argmax(att[legal])])
    return int(rng.choice(legal))


def _info(args: argparse.Namespace) -> int:
    from wsigym.envs.slide_source import budget_steps

    env = make_env(args).unwrapped
    src = env.source
    n = np.asarray(src.n_list)
    budgets = np.asarray([budget_steps(int(k), env.config.budget) for k in n])
    options = env.options
    where = (
        f"live slides {options.dataset.name!r}"
        if options.live
        else f"{src.dataset.name!r} split={options.split}"
    )
    print(f"{args.env} on {where} fold={options.fold}: {len(src)} slides")
    print(
        f"  patches N: min {n.min()}, median {int(np.median(n))}, max {n.max()}; max_patches P = {env.max_patches}"
    )
    print(
        f"  budget {env.config.budget}: T = max(1, ceil(budget N)) zooms, min {budgets.min()}, max {budgets.max()}"
    )
    print(
        f"  update={env.config.update} tau={env.config.tau} absolute_cosine={env.config.absolute_cosine} "
        f"reward={env.config.reward} mask_updated={env.config.mask_updated}"
    )
    print(f"  action space: {env.action_space}")
    for key, space in env.observation_space.spaces.items():
        print(f"  obs[{key!r}]: {space}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from PIL import Image

    env = make_env(args, render_mode="rgb_array")
    rng = np.random.default_rng(args.seed)
    _, info = env.reset(seed=args.seed, options={"slide_id": args.slide_id} if args.slide_id else None)
    steps = args.steps if args.steps is not None else info["budget_steps"]
    for _ in range(steps):
        _, _, term, trunc, info = env.step(policy_action(args.policy, env, info, rng))
        if term or trunc:
            break
    frame = env.render()
    out = atomic_write(args.out, lambda tmp: Image.fromarray(frame).save(tmp, format="PNG"))
    print(f"wrote {out} ({frame.shape[1]}x{frame.shape[0]}) slide {info['slide_id']}, {info['zooms']} zooms")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    env = make_env(args)
    rng = np.random.default_rng(args.seed)
    print(
        f"{'episode':>7s} {'slide':>12s} {'label':>5s} {'pred':>4s} {'p(label)':>8s} {'return':>8s} {'zooms':>5s} {'hits':>5s}"
    )
    for ep in range(args.episodes):
        _, info = env.reset(seed=args.seed + ep)
        ret, hits, done = 0.0, 0, False
        while not done:
            _, r, term, trunc, info = env.step(policy_action(args.policy, env, info, rng))
            ret += r
            hits += int(info.get("hit_tumour", False))
            done = term or trunc
        p = float(info["probability"][info["label"]])
        print(
            f"{ep:7d} {info['slide_id']:>12s} {info['label']:5d} {info['prediction']:4d} {p:8.3f} "
            f"{ret:8.3f} {info['zooms']:5d} {hits:5d}"
        )
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``wsigym env info|render|rollout``."""
    env = sub.add_parser("env", help="inspect, render and run the WSIZoom environments")
    env_sub = env.add_subparsers(dest="env_command", required=True)
    info = env_sub.add_parser("info", help="spaces, slides and budgets of a split")
    _add_env_args(info)
    info.set_defaults(func=_info)
    render = env_sub.add_parser("render", help="zoom with a simple policy and save the frame as PNG")
    _add_env_args(render)
    render.add_argument("--out", required=True, help="PNG path")
    render.add_argument(
        "--steps", type=int, default=None, help="zooms before rendering (default: the budget)"
    )
    render.add_argument("--policy", default="attention", choices=("random", "attention"))
    render.add_argument("--slide-id", default=None)
    render.set_defaults(func=_render)
    rollout = env_sub.add_parser("rollout", help="run episodes with a simple policy")
    _add_env_args(rollout)
    rollout.add_argument("--episodes", type=int, default=5)
    rollout.add_argument("--policy", default="random", choices=("random", "attention"))
    rollout.set_defaults(func=_rollout)
