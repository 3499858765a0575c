"""The environments' input contract: integer actions, tau/budget ranges, step after the end,
illegal actions (remap / noop / raise), the dataset-wide padding and both env checkers."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded

import wsigym  # noqa: F401  (registers the environments)
from wsigym.envs.vector import WSIZoomVectorEnv
from wsigym.envs.zoom import WSIZoomEnv
from wsigym.envs.zoom_batch import ILLEGAL_ACTION_PENALTY


@pytest.mark.parametrize(
    "action",
    [2.7, 2.0, "3", True, np.bool_(True), np.float32(1.0), np.array([1.5]), np.array([1, 2]), None],
    ids=["float", "integral-float", "str", "bool", "np-bool", "np-float", "float-array", "two", "none"],
)
def test_non_integer_actions_refused(env_kwargs, action):
    env = WSIZoomEnv(**env_kwargs)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="integer patch index"):
        env.step(action)
    assert env.batch.zooms[0] == 0  # nothing happened


@pytest.mark.parametrize("action", [3, np.int64(3), np.int32(3), np.uint8(3), np.array(3), np.array([3])])
def test_integer_actions_accepted(env_kwargs, action):
    env = WSIZoomEnv(**env_kwargs, illegal_action="raise")
    env.reset(seed=0)
    _, _, _, _, info = env.step(action)
    assert info["zoomed"] == 3 and info["zooms"] == 1 and not info["illegal_action"]


def test_vector_refuses_float_arrays(env_kwargs):
    vec = WSIZoomVectorEnv(num_envs=2, **env_kwargs)
    vec.reset(seed=0)
    with pytest.raises(TypeError, match="float64"):
        vec.step(np.array([1.9, 2.2]))
    with pytest.raises(TypeError, match="bool"):
        vec.step(np.array([True, False]))
    with pytest.raises(ValueError, match="expected 2 actions"):
        vec.step(np.array([1, 2, 3]))
    assert (vec.batch.zooms == 0).all()
    _, _, _, _, info = vec.step([1, 2])  # a list of ints is fine
    np.testing.assert_array_equal(info["zoomed"], [1, 2])


@pytest.mark.parametrize("tau", [1.5, 95, -2, float("nan"), float("inf"), True, "0.9"])
def test_tau_must_be_a_cosine(env_kwargs, tau):
    with pytest.raises(ValueError, match=r"tau .* in \[-1, 1\]"):
        WSIZoomEnv(**env_kwargs, tau=tau)
    with pytest.raises(ValueError, match=r"tau .* in \[-1, 1\]"):
        WSIZoomVectorEnv(num_envs=2, **env_kwargs, tau=tau)


@pytest.mark.parametrize("tau", [-1.0, 0, 1])
def test_tau_range_ends_accepted(env_kwargs, tau):
    assert WSIZoomEnv(**env_kwargs, tau=tau).config.tau == float(tau)


def test_cli_rollout_refuses_tau(capsys):
    from wsigym.cli import main

    assert main(["env", "rollout", "--tau", "7", "--episodes", "1"]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert "tau" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ValueError, match="tau"):
        main(["--debug", "env", "rollout", "--tau", "7", "--episodes", "1"])


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan"), True, "0.2"])
def test_budget_in_unit_interval(env_kwargs, budget):
    with pytest.raises(ValueError, match=r"budget .*\(0, 1\]"):
        WSIZoomEnv(**env_kwargs, budget=budget)


def test_bad_illegal_action_option(env_kwargs):
    with pytest.raises(ValueError, match="illegal_action must be one of"):
        WSIZoomEnv(**env_kwargs, illegal_action="ignore")


def test_render_mode_human_is_one_clear_error(env_kwargs):
    with pytest.raises(ValueError, match=r"opens no window.*rgb_array"):
        WSIZoomEnv(**env_kwargs, render_mode="human")
    with pytest.raises(ValueError, match="opens no window"):
        WSIZoomVectorEnv(num_envs=2, **env_kwargs, render_mode="human")


def test_step_after_end_raises(env_kwargs):
    env = WSIZoomEnv(**env_kwargs, budget=0.05)
    _, info = env.reset(seed=0)
    done = False
    while not done:
        _, _, term, trunc, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
        done = term or trunc
    zooms = env.batch.zooms[0]
    with pytest.raises(ResetNeeded, match="after the episode ended"):
        env.step(int(np.flatnonzero(info["action_mask"])[0]))
    assert env.batch.zooms[0] == zooms  # no zoom past the budget
    with pytest.raises(RuntimeError):  # EpisodeEnded is a RuntimeError too
        env.step(0)
    env.reset(seed=1)
    env.step(int(np.flatnonzero(env.action_masks())[0]))  # a reset clears it
    with pytest.raises(ResetNeeded, match="before calling reset"):
        WSIZoomEnv(**env_kwargs).step(0)


def _smallest_slide(env: WSIZoomEnv) -> int:
    return int(np.argmin(env.source.n_list))


def test_remap_rule(env_kwargs):
    env = WSIZoomEnv(**env_kwargs, budget=1.0)
    obs, _ = env.reset(seed=0, options={"slide_index": _smallest_slide(env)})
    n = int(obs["patch_mask"].sum())
    assert n < env.max_patches
    _, _, _, _, info = env.step(n + 2)  # padding index -> (n + 2) mod n = 2
    assert info["zoomed"] == 2 and info["illegal_action"] and info["zooms"] == 1
    _, _, _, _, info = env.step(2)  # zoomed -> the next legal patch
    assert info["zoomed"] == 3 and info["illegal_action"]
    env.step(n - 1)
    _, _, _, _, info = env.step(n - 1)  # wraps around to 0
    assert info["zoomed"] == 0
    _, _, _, _, info = env.step(1)
    assert info["zoomed"] == 1 and not info["illegal_action"]
    with pytest.raises(ValueError, match="outside Discrete"):
        env.step(env.max_patches)


@pytest.mark.parametrize("reward", ["ce", "delta_ce", "hit"])
def test_noop_spends_budget_with_penalty(env_kwargs, reward):
    env = WSIZoomEnv(**env_kwargs, illegal_action="noop", reward=reward, budget=0.05)
    obs, info = env.reset(seed=0, options={"slide_index": _smallest_slide(env)})
    n = int(obs["patch_mask"].sum())
    ce = info["ce"]
    obs2, r, term, trunc, info2 = env.step(n)  # padding index: nothing zoomed
    np.testing.assert_array_equal(obs2["state"], obs["state"])
    assert not obs2["visited"].any() and info2["zoomed"] == -1 and info2["illegal_action"]
    assert info2["zooms"] == 1 and obs2["budget"][0] < 1.0
    base = {"ce": -ce, "delta_ce": 0.0, "hit": 0.0}[reward]
    assert r == pytest.approx(base - ILLEGAL_ACTION_PENALTY, abs=1e-5)
    steps = 1
    while not (term or trunc):
        _, _, term, trunc, info2 = env.step(n)
        steps += 1
    assert steps == info["budget_steps"] and term


def test_noop_in_vector_env_mixes_with_zooms(env_kwargs):
    vec = WSIZoomVectorEnv(num_envs=2, **env_kwargs, illegal_action="noop", budget=0.5)
    obs, _ = vec.reset(seed=0)
    vec.step(np.array([0, 0]))
    obs, r, _, _, info = vec.step(np.array([0, 1]))  # env 0 repeats its zoom, env 1 zooms patch 1
    np.testing.assert_array_equal(info["illegal_action"], [True, False])
    np.testing.assert_array_equal(info["zoomed"], [-1, 1])
    assert obs["visited"][0].sum() == 1 and obs["visited"][1].sum() == 2
    assert r[0] < -ILLEGAL_ACTION_PENALTY + 1e-6


def test_masked_agents_are_unaffected(env_kwargs):
    """A masked agent never sends an illegal action, so the three options give the same episode."""
    traces = []
    for mode in ("remap", "noop", "raise"):
        env = WSIZoomEnv(**env_kwargs, illegal_action=mode)
        rng = np.random.default_rng(0)
        _, info = env.reset(seed=3)
        rewards, done = [], False
        while not done:
            _, r, term, trunc, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
            rewards.append(r)
            done = term or trunc
        traces.append(rewards)
    assert traces[0] == traces[1] == traces[2]


def test_padding_is_dataset_wide_and_in_spec(env_kwargs):
    ds = env_kwargs["dataset"]
    largest = max(ds.load(s).n for s in ds.slide_ids())
    spaces = []
    for split in ("train", "val", "test"):
        env = gym.make("WSIZoom-v0", **env_kwargs, split=split)
        assert env.unwrapped.max_patches == largest
        assert env.spec.kwargs["max_patches"] == largest
        spaces.append(env.observation_space)
    assert spaces[0] == spaces[1] == spaces[2]
    again = gym.make(env.spec)
    assert again.unwrapped.max_patches == largest and again.unwrapped.source.split == "test"
    assert env.unwrapped.dim == 16
    obs, _ = env.reset(seed=0)
    assert obs["state"].reshape(env.unwrapped.max_patches, env.unwrapped.dim).shape == (largest, 16)


def test_policy_on_another_split(env_kwargs):
    """A model built on the train env predicts on the test env (same spaces)."""
    from stable_baselines3 import PPO

    train = WSIZoomEnv(**env_kwargs, split="train")
    test = WSIZoomEnv(**env_kwargs, split="test")
    model = PPO("MultiInputPolicy", train, n_steps=8, batch_size=8, seed=0, device="cpu")
    obs, _ = test.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    test.step(action)


@pytest.mark.parametrize("seed", range(10))
def test_both_checkers_pass_on_the_default_env(env_kwargs, seed):
    """Gymnasium's and SB3's ``check_env`` with mask-unaware random actions, slides of different
    sizes (padding indices get sampled), the default ``illegal_action``."""
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = gym.make("WSIZoom-v0", **env_kwargs, render_mode="rgb_array")
    assert len(set(env.unwrapped.source.n_list)) > 1
    env.unwrapped.action_space.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check(env.unwrapped)
        sb3_check(WSIZoomEnv(**env_kwargs), warn=True)
