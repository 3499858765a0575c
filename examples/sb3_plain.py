"""Plain stable-baselines3 (no action masks) on ``WSIZoom-v0``: PPO, A2C or DQN with ``MultiInputPolicy``.

The default ``illegal_action="remap"`` makes every action of ``Discrete(P)`` a zoom (an illegal index
is remapped to a legal patch, ``info["illegal_action"]`` says so), so mask-unaware agents train as on
any Gymnasium environment. SB3's default policy flattens the ``P*d`` state into one MLP input: fine on
small data, heavy on synth-c16 (``P*d`` = 1.6M floats per observation); see ``sb3_masked.py`` for the
per-patch policy.

Run from the repository root (the tiny synthetic dataset, a few seconds)::

    .venv/bin/python examples/sb3_plain.py --algo ppo --timesteps 256 --dataset synth-c16-tiny
"""

from __future__ import annotations

import argparse
from typing import Any

from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.env_util import make_vec_env

import wsigym  # noqa: F401  (registers WSIZoom-v0)
from wsigym.envs.zoom import WSIZoomEnv

ALGOS: dict[str, tuple[type, dict[str, Any]]] = {
    "ppo": (PPO, {"n_steps": 64, "batch_size": 32}),
    "a2c": (A2C, {"n_steps": 16}),
    "dqn": (DQN, {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32}),
}


def run(algo: str, env_kwargs: dict[str, Any], timesteps: int = 256, seed: int = 0) -> Any:
    """Train ``algo`` for ``timesteps`` on two ``WSIZoom`` envs and return the SB3 model."""
    cls, kwargs = ALGOS[algo]
    env = make_vec_env(WSIZoomEnv, n_envs=2, seed=seed, env_kwargs=env_kwargs)
    model = cls("MultiInputPolicy", env, seed=seed, device="cpu", policy_kwargs={"net_arch": [64]}, **kwargs)
    model.learn(total_timesteps=timesteps)
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=sorted(ALGOS), default="ppo")
    p.add_argument("--dataset", default="synth-c16-tiny")
    p.add_argument("--timesteps", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    model = run(args.algo, {"dataset": args.dataset, "budget": 0.05}, args.timesteps, args.seed)
    print(f"{args.algo}: trained {model.num_timesteps} timesteps without masks")


if __name__ == "__main__":
    main()
