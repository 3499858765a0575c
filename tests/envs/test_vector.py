"""The vector env equals B independent WSIZoom-v0 envs (seeds s+i, NEXT_STEP autoreset)."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import wsigym  # noqa: F401
from wsigym.envs import state_update
from wsigym.envs.vector import WSIZoomVectorEnv
from wsigym.envs.zoom import WSIZoomEnv


def pick(mask: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(np.flatnonzero(mask)))


@pytest.mark.parametrize(
    ("update", "reward"),
    [("tsu", "ce"), ("global", "ce"), ("none", "ce"), ("tsu", "evidence"), ("tsu", "delta_margin")],
)
def test_vector_equals_independent_envs(env_kwargs, update, reward):
    b, seed, steps = 3, 7, 45
    kw = {**env_kwargs, "update": update, "budget": 0.25, "reward": reward}
    vec = WSIZoomVectorEnv(num_envs=b, **kw)
    singles = [WSIZoomEnv(**kw) for _ in range(b)]
    vobs, vinfo = vec.reset(seed=seed)
    sobs = []
    for i, env in enumerate(singles):
        o, info = env.reset(seed=seed + i)
        sobs.append(o)
        assert vinfo["slide_id"][i] == info["slide_id"]
        np.testing.assert_allclose(vinfo["probability"][i], info["probability"], atol=1e-6)
    for key in vobs:
        np.testing.assert_array_equal(vobs[key], np.stack([o[key] for o in sobs]))
    rng = np.random.default_rng(0)
    autoreset = np.zeros(b, dtype=bool)
    episodes_done = 0
    single_masks = [vinfo["action_mask"][i] for i in range(b)]
    for _ in range(steps):
        actions = np.array([pick(single_masks[i], rng) for i in range(b)])
        vobs, vrew, vterm, vtrunc, vinfo = vec.step(actions)
        for i, env in enumerate(singles):
            if autoreset[i]:  # NEXT_STEP: this step resets sub-env i and ignores its action
                o, info = env.reset()
                r, term, trunc = 0.0, False, False
            else:
                o, r, term, trunc, info = env.step(int(actions[i]))
            for key in o:
                np.testing.assert_allclose(vobs[key][i], o[key], rtol=1e-5, atol=1e-6, err_msg=key)
            assert vrew[i] == pytest.approx(r, abs=1e-5)
            assert vterm[i] == term and vtrunc[i] == trunc
            assert vinfo["slide_id"][i] == info["slide_id"]
            assert vinfo["zooms"][i] == info["zooms"]
            np.testing.assert_array_equal(vinfo["action_mask"][i], info["action_mask"])
            assert vinfo["_tsu_updates"][i] == (not autoreset[i])
            if "hit_tumour" in info:
                assert vinfo["_hit_tumour"][i] and vinfo["hit_tumour"][i] == info["hit_tumour"]
            single_masks[i] = info["action_mask"]
        episodes_done += int((vterm | vtrunc).sum())
        autoreset = vterm | vtrunc
    assert episodes_done >= b  # several episodes, autoresets included


def test_make_vec_entry_point(env_kwargs):
    vec = gym.make_vec("WSIZoom-v0", num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    assert isinstance(vec.unwrapped, WSIZoomVectorEnv)
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert vec.config.update == "tsu"
    obs, info = vec.reset(seed=0)
    assert vec.observation_space.contains(obs)
    assert obs["state"].shape == (2, vec.max_patches * vec.dim)
    assert info["action_mask"].shape == (2, vec.max_patches) and info["_action_mask"].all()
    assert vec.action_masks().shape == (2, vec.max_patches) and vec.action_masks().dtype == bool
    glob = gym.make_vec("WSIZoomGlobal-v0", num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    assert glob.config.update == "global"


def test_vector_invalid_action_and_partial_reset(env_kwargs):
    vec = WSIZoomVectorEnv(num_envs=2, **env_kwargs, illegal_action="raise")
    obs, _info = vec.reset(seed=1)
    vec.step(np.array([0, 0]))
    with pytest.raises(
        ValueError, match=r"already zoomed \(environment 1\)|already zoomed \(environment 0\)"
    ):
        vec.step(np.array([0, 0]))
    before = vec.batch.slide.copy()
    obs, _ = vec.reset(seed=5, options={"reset_mask": np.array([False, True])})
    assert obs["visited"][0].sum() == 1 and obs["visited"][1].sum() == 0
    assert vec.batch.slide[0] == before[0]


def test_vector_render(env_kwargs):
    vec = WSIZoomVectorEnv(num_envs=2, render_mode="rgb_array", **env_kwargs)
    vec.reset(seed=0)
    vec.step(np.array([0, 1]))
    frames = vec.render()
    assert frames.ndim == 4 and frames.shape[0] == 2 and frames.shape[3] == 3 and frames.dtype == np.uint8


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_vector_cuda_matches_cpu(tiny_dataset, models):
    import copy

    hafed, tsu = models
    kw = {"dataset": tiny_dataset, "progress": False, "num_envs": 3}
    cpu = WSIZoomVectorEnv(hafed=copy.deepcopy(hafed), tsu=copy.deepcopy(tsu), **kw)
    gpu = WSIZoomVectorEnv(hafed=copy.deepcopy(hafed), tsu=copy.deepcopy(tsu), device="cuda", **kw)
    o1, _ = cpu.reset(seed=0)
    o2, _ = gpu.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = cpu.action_masks()
        a = (rng.random(m.shape) * m).argmax(1)
        o1, r1, t1, u1, _ = cpu.step(a)
        o2, r2, t2, u2, _ = gpu.step(a)
        np.testing.assert_allclose(o1["state"], o2["state"], atol=1e-4)
        np.testing.assert_allclose(r1, r2, atol=1e-4)
        np.testing.assert_array_equal(t1 | u1, t2 | u2)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("tsu_anchor", ["state", "lowres"])
def test_pending_scan_engine_equals_full_scan(env_kwargs, tsu_anchor, batched, monkeypatch):
    """The engine's CPU scan over pending rows (forgotten on reset and on a change of rows) gives the
    observations and rewards of the full scan, over several episodes of 3 environments; so does the
    full scan as one product over the packed rows (``batched``: the CUDA engine's path, run on the CPU)."""
    monkeypatch.setattr(
        state_update, "scan_cosines", functools.partial(state_update.scan_cosines, batched=batched)
    )
    update = "tsu" if tsu_anchor == "state" else "tsu-lowres"
    kw = {**env_kwargs, "update": update, "budget": 0.5}
    fast, full = WSIZoomVectorEnv(num_envs=3, **kw), WSIZoomVectorEnv(num_envs=3, **kw)
    assert fast.batch.tensors.pending is not None
    obs_a, info = fast.reset(seed=3)
    obs_b, _ = full.reset(seed=3)
    rng = np.random.default_rng(1)
    for _ in range(70):
        full.batch.tensors.pending = None  # the reference scans every row
        actions = np.array([pick(m, rng) for m in info["action_mask"]])
        obs_a, rew_a, term_a, trunc_a, info = fast.step(actions)
        obs_b, rew_b, term_b, trunc_b, _ = full.step(actions)
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key], err_msg=key)
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(term_a | trunc_a, term_b | trunc_b)
