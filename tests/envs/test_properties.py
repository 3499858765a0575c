"""Property tests (hypothesis) of the env contract: any legal action sequence keeps the invariants.

Invariants after every step: the budget observation is ``(T - zooms) / T``; ``action_mask`` is
real & not zoomed (& not updated with ``mask_updated``); ``visited`` counts the zooms and is inside
``updated``; updated rows stay updated; rows never updated still hold ``Z``; zoomed rows hold ``V``;
the incremental classifier's logits equal a full ``HAFED.classify`` of the state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsigym.envs.zoom import WSIZoomEnv

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def envs(tiny_dataset, models):
    hafed, tsu = models
    kw = {"dataset": tiny_dataset, "hafed": hafed, "tsu": tsu, "progress": False, "illegal_action": "raise"}
    return {
        (update, masked): WSIZoomEnv(**kw, update=update, mask_updated=masked, budget=0.5)
        for update in ("tsu", "tsu-lowres", "global", "none")
        for masked in (False, True)
    }


@SETTINGS
@given(
    update=st.sampled_from(["tsu", "tsu-lowres", "global", "none"]),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
    picks=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=40),
)
def test_random_legal_sequences_keep_invariants(envs, update, masked, seed, picks):
    env = envs[(update, masked)]
    obs, info = env.reset(seed=seed)
    p, d = env.max_patches, env.dim
    n = int(obs["patch_mask"].sum())
    k = int(env.batch.slide[0])
    z = env.source.z[env.source.rows(k)].numpy()
    v = env.source.v[env.source.rows(k)].numpy()
    t_budget = info["budget_steps"]
    prev_updated = np.zeros(p, dtype=bool)
    zoomed: list[int] = []
    for pick in picks:
        legal = np.flatnonzero(info["action_mask"])
        action = int(legal[int(pick * len(legal))])
        obs, _, term, trunc, info = env.step(action)
        zoomed.append(action)
        state = obs["state"].reshape(p, d)
        visited, updated = obs["visited"].astype(bool), obs["updated"].astype(bool)
        assert info["zooms"] == len(zoomed) == visited.sum()
        assert obs["budget"][0] == pytest.approx((t_budget - len(zoomed)) / t_budget)
        taken = updated if masked else visited
        expected_mask = obs["patch_mask"].astype(bool) & ~taken
        np.testing.assert_array_equal(obs["action_mask"].astype(bool), expected_mask)
        np.testing.assert_array_equal(env.action_masks(), expected_mask)
        assert np.flatnonzero(visited).tolist() == sorted(zoomed)
        assert (visited <= updated).all() and (prev_updated <= updated).all()
        assert not updated[n:].any() and not state[n:].any()
        if update != "global":  # the global rule rewrites every unzoomed row each step
            np.testing.assert_allclose(state[:n][~updated[:n]], z[~updated[:n]], rtol=0, atol=0)
        if update == "none":
            assert (updated == visited).all()
        np.testing.assert_allclose(state[zoomed], v[zoomed], rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            full = env.hafed.classify(
                torch.as_tensor(state[None]), torch.as_tensor(obs["patch_mask"][None]).bool()
            )["logits"][0]
        np.testing.assert_allclose(env.batch.logits[0].numpy(), full.numpy(), rtol=1e-4, atol=1e-4)
        prev_updated = updated
        if term or trunc:
            assert len(zoomed) == t_budget or not info["action_mask"].any()
            break
    else:
        assert len(zoomed) < t_budget


@SETTINGS
@given(seed=st.integers(0, 2**16), actions=st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
def test_remap_zooms_a_legal_patch_for_any_action(envs, tiny_dataset, models, seed, actions):
    env = envs[("tsu", False)]
    env.batch.config.illegal_action = "remap"
    try:
        _, info = env.reset(seed=seed)
        for a in actions:
            a %= env.max_patches
            legal = info["action_mask"].astype(bool)
            _, _, term, trunc, info = env.step(a)
            assert legal[info["zoomed"]] and info["illegal_action"] == (not legal[a])
            if not info["illegal_action"]:
                assert info["zoomed"] == a
            if term or trunc:
                break
    finally:
        env.batch.config.illegal_action = "raise"
