"""ZoomOptions: one settings object for both envs, the same as the keyword arguments."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

import wsigym  # noqa: F401  (registers the environments)
from wsigym.envs.options import OPTION_NAMES, ZoomOptions, zoom_options
from wsigym.envs.vector import WSIZoomVectorEnv
from wsigym.envs.zoom import WSIZoomEnv


def _trace(env: WSIZoomEnv, steps: int) -> list[tuple[dict, float]]:
    obs, info = env.reset(seed=3)
    out = [(obs, 0.0)]
    for _ in range(steps):
        action = int(np.flatnonzero(info["action_mask"])[-1])
        obs, reward, term, trunc, info = env.step(action)
        out.append((obs, reward))
        if term or trunc:
            break
    return out


def test_options_object_equals_keyword_arguments(env_kwargs):
    kw = {**env_kwargs, "budget": 0.5, "reward": "delta_ce", "update": "tsu-lowres"}
    by_kwargs = WSIZoomEnv(**kw)
    by_options = WSIZoomEnv(options=ZoomOptions(**kw))
    assert by_kwargs.options == by_options.options and by_kwargs.config == by_options.config
    a, b = _trace(by_kwargs, 5), _trace(by_options, 5)
    assert len(a) == len(b) > 2
    for (obs_a, r_a), (obs_b, r_b) in zip(a, b, strict=True):
        assert r_a == r_b
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])


def test_keyword_arguments_override_options(env_kwargs):
    env = WSIZoomEnv(options=ZoomOptions(**env_kwargs, budget=0.5, reward="hit"), budget=0.25)
    assert env.config.budget == 0.25 and env.config.reward == "hit"
    vec = gym.make_vec(
        "WSIZoomNoUpdate-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        options=ZoomOptions(**env_kwargs, update="tsu"),
    )
    assert vec.unwrapped.config.update == "none"  # the registered id's update= is a keyword argument


def test_defaults_are_the_options_defaults(env_kwargs):
    env = WSIZoomEnv(**env_kwargs)
    assert env.options == ZoomOptions(**env_kwargs)
    defaults = ZoomOptions()
    assert env.config.budget == defaults.budget and env.config.illegal_action == defaults.illegal_action
    vec = WSIZoomVectorEnv(num_envs=2, **env_kwargs)
    assert vec.options == env.options and vec.config == env.config


def test_unknown_argument_is_named(env_kwargs):
    with pytest.raises(TypeError, match=r"unknown environment argument\(s\) \['budjet'\].*'budget'"):
        WSIZoomEnv(**env_kwargs, budjet=0.1)
    with pytest.raises(TypeError, match=r"\['budjet'\].*'num_envs'"):
        WSIZoomVectorEnv(num_envs=2, **env_kwargs, budjet=0.1)
    with pytest.raises(TypeError, match=r"\['budjet'\]"):
        gym.make("WSIZoom-v0", **env_kwargs, budjet=0.1)
    with pytest.raises(TypeError, match="options must be a ZoomOptions, got dict"):
        WSIZoomEnv(options={"budget": 0.1})
    with pytest.raises(TypeError, match="budjet"):
        ZoomOptions(budjet=0.1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("budget", 0.0, "budget must be a fraction"),
        ("tau", float("nan"), "tau is a cosine threshold"),
        ("update", "everything", "update must be one of"),
        ("reward", "gain", "reward must be one of"),
        ("budget_end", "stop", "budget_end must be one of"),
        ("illegal_action", "ignore", "illegal_action must be one of"),
        ("max_patches", 2.5, "max_patches must be an integer"),
    ],
)
def test_bad_values_raise_at_construction(field, value, message):
    with pytest.raises(ValueError, match=message):
        ZoomOptions(**{field: value})
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(ZoomOptions(), **{field: value})


def test_live_keywords_need_slides():
    with pytest.raises(ValueError, match=r"\['labels'\] describe live slides and need slides="):
        zoom_options(None, {"labels": {"a": 1}})
    assert zoom_options(None, {"slides": None, "labels": None}) == ZoomOptions()  # nothing given
    assert OPTION_NAMES[0] == "dataset" and "device" in OPTION_NAMES
