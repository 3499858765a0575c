"""``action_masks()`` through Gymnasium wrappers and Gymnasium / SB3 vector environments."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.vec_env import DummyVecEnv

from wsigym.envs.masks import ActionMasks, VectorActionMasks, action_masks


def _expected(env) -> np.ndarray:
    return np.asarray(env.unwrapped.action_masks(), dtype=bool)


def test_through_wrappers(env_kwargs):
    env = gym.wrappers.RecordEpisodeStatistics(gym.make("WSIZoom-v0", **env_kwargs))
    with pytest.raises(AttributeError):
        env.action_masks()  # Gymnasium 1.x wrappers do not forward attributes: the gap closed here
    obs, _ = env.reset(seed=0)
    wrapped = ActionMasks(env)
    first = wrapped.action_masks()
    assert first.dtype == bool and first.shape == (env.unwrapped.max_patches,)
    assert np.array_equal(first, obs["action_mask"].astype(bool)) and np.array_equal(action_masks(env), first)
    action = int(np.flatnonzero(first)[3])
    wrapped.step(action)
    after = wrapped.action_masks()
    assert not after[action] and first[action] and np.array_equal(after, _expected(env))
    assert np.array_equal(get_action_masks(wrapped), after)  # sb3-contrib's path
    with pytest.raises(TypeError, match="got int"):
        action_masks(3)


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_gymnasium_vector_envs(env_kwargs, vector):
    kwargs = {**env_kwargs, "illegal_action": "raise"}
    fns = [lambda: gym.make("WSIZoom-v0", **kwargs) for _ in range(2)]
    cls = gym.vector.SyncVectorEnv if vector == "sync" else gym.vector.AsyncVectorEnv
    vec = VectorActionMasks(cls(fns))
    try:
        obs, _ = vec.reset(seed=[0, 1])
        masks = vec.action_masks()
        assert masks.shape == (2, vec.single_action_space.n) and masks.dtype == bool
        assert np.array_equal(masks, obs["action_mask"].astype(bool))
        assert np.array_equal(get_action_masks(vec), masks)  # sb3-contrib: get_wrapper_attr
        assert np.array_equal(np.stack(vec.env_method("action_masks")), masks)
        assert np.array_equal(vec.env_method("action_masks", indices=1)[0], masks[1])
        actions = np.array([np.flatnonzero(m)[0] for m in masks])
        vec.step(actions)  # "raise": a mask that lied would fail here
        after = action_masks(vec)
        assert not after[0, actions[0]] and not after[1, actions[1]]
    finally:
        vec.close()


def test_sb3_vec_env(env_kwargs):
    vec = DummyVecEnv([lambda: ActionMasks(gym.make("WSIZoom-v0", **env_kwargs)) for _ in range(2)])
    vec.reset()
    masks = get_action_masks(vec)
    assert masks.shape == (2, vec.action_space.n) and np.array_equal(action_masks(vec), masks)
    vec.close()
