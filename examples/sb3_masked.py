"""sb3-contrib's ``MaskablePPO`` on ``WSIZoom-v0``, with the default policy or wsigym's per-patch one.

``MaskablePPO`` reads the legal actions from ``env.action_masks()`` (reachable through Gymnasium's
wrappers and SB3's vector envs via ``get_wrapper_attr``), so it never sends an illegal action and
``illegal_action`` plays no part. ``--policy patch`` uses :class:`wsigym.agents.policy.PatchPolicy`, a
gated-attention scorer shared over patches (a few thousand parameters whatever ``P``), the policy
``wsigym train ppo`` trains; ``--policy mlp`` is SB3's ``MultiInputPolicy``.

Run from the repository root (the tiny synthetic dataset, a few seconds)::

    .venv/bin/python examples/sb3_masked.py --policy patch --timesteps 256 --dataset synth-c16-tiny
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from sb3_contrib import MaskablePPO
from stable_baselines3.common.env_util import make_vec_env

import wsigym  # noqa: F401  (registers WSIZoom-v0)
from wsigym.agents.policy import PatchPolicy
from wsigym.envs.zoom import WSIZoomEnv


def run(policy: str, env_kwargs: dict[str, Any], timesteps: int = 256, seed: int = 0) -> MaskablePPO:
    """Train a ``MaskablePPO`` for ``timesteps`` and play one greedy masked episode."""
    env = make_vec_env(WSIZoomEnv, n_envs=2, seed=seed, env_kwargs=env_kwargs)
    policy_cls = PatchPolicy if policy == "patch" else "MultiInputPolicy"
    policy_kwargs = {"hidden": 32, "standardise": True} if policy == "patch" else {"net_arch": [64]}
    model = MaskablePPO(
        policy_cls, env, n_steps=32, batch_size=32, seed=seed, device="cpu", policy_kwargs=policy_kwargs
    )
    model.learn(total_timesteps=timesteps)
    single = WSIZoomEnv(**env_kwargs, illegal_action="raise")  # a masked agent never trips it
    obs, info = single.reset(seed=seed)
    done = False
    while not done:
        action, _ = model.predict(obs, deterministic=True, action_masks=single.action_masks())
        obs, _, terminated, truncated, info = single.step(int(np.asarray(action)))
        done = terminated or truncated
    print(
        f"greedy episode on {info['slide_id']}: {info['zooms']} zooms, p(label) {info['probability'][info['label']]:.3f}"
    )
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", choices=("patch", "mlp"), default="patch")
    p.add_argument("--dataset", default="synth-c16-tiny")
    p.add_argument("--timesteps", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run(args.policy, {"dataset": args.dataset, "budget": 0.05}, args.timesteps, args.seed)


if __name__ == "__main__":
    main()
