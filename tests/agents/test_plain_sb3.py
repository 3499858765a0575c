"""Plain (mask-unaware) SB3 agents train on the default ``WSIZoom-v0``: PPO, A2C and DQN."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.env_util import make_vec_env

from wsigym.envs.zoom import WSIZoomEnv

ALGOS = {
    "ppo": (PPO, {"n_steps": 64, "batch_size": 32, "n_epochs": 1}),
    "a2c": (A2C, {"n_steps": 16}),
    "dqn": (DQN, {"learning_starts": 32, "buffer_size": 500, "batch_size": 16, "train_freq": 4}),
}


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_plain_sb3_trains_without_masks(env_kwargs, algo):
    cls, kwargs = ALGOS[algo]
    vec = make_vec_env(WSIZoomEnv, n_envs=2, seed=0, env_kwargs=env_kwargs)
    model = cls("MultiInputPolicy", vec, seed=0, device="cpu", policy_kwargs={"net_arch": [16]}, **kwargs)
    before = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    changed = [k for k, v in model.policy.state_dict().items() if not np.allclose(v, before[k])]
    assert changed, f"{algo}: no parameter changed in training"
    obs = vec.reset()
    actions, _ = model.predict(obs, deterministic=True)
    vec.step(actions)
