"""The engine holds the real rows of its current slides, packed, not the dataset's largest slide
(zoom_batch and row_slots docstrings)."""

from __future__ import annotations

import numpy as np
import pytest

from wsigym.envs.row_slots import HEADROOM, MAX_SLACK, ROW_STEP
from wsigym.envs.vector import WSIZoomVectorEnv
from wsigym.envs.zoom import WSIZoomEnv


@pytest.fixture(scope="module")
def wide_dataset(make_tiny_dataset):
    """Slides of 10 to 300 patches, so that the engine's rows must grow and shrink."""
    return make_tiny_dataset(count=14, n=(10, 300), seed=3, name="wide")


def rounded(n: int) -> int:
    return -(-n // ROW_STEP) * ROW_STEP


def test_rows_follow_the_slide(wide_dataset, models):
    """One environment holds its slide's rows (rounded up, with headroom), growing and shrinking."""
    hafed, tsu = models
    env = WSIZoomEnv(dataset=wide_dataset, hafed=hafed, tsu=tsu, progress=False, budget=0.2)
    src, batch = env.source, env.batch
    t = batch.tensors
    sizes = dict(zip(src.slide_ids, src.n_list, strict=True))
    small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    assert MAX_SLACK * rounded(sizes[small]) < sizes[large]  # the data make a shrink necessary
    held = []
    for slide in [small, large, small, *sorted(sizes)]:
        obs, _ = env.reset(seed=0, options={"slide_id": slide})
        n = sizes[slide]
        held.append(t.slots.capacity)
        assert (
            t.state.shape[0] == t.z_norm.shape[0] == batch.classifier.row_logits.shape[0] == t.slots.capacity
        )
        assert n <= t.slots.capacity <= MAX_SLACK * rounded(n)
        assert int((t.slots.owner == 0).sum()) == n
        z = src.episode_arrays(src.slide_ids.index(slide))[0]
        assert t.z[0] is z or t.z[0].data_ptr() == z.data_ptr()  # the source's rows, not a copy
        np.testing.assert_array_equal(t.rows(0).numpy(), z.numpy())
        state = obs["state"].reshape(env.max_patches, -1)
        np.testing.assert_array_equal(state[:n], z.numpy())
        assert not state[n:].any()
    assert held[1] > held[0] and held[2] < held[1]  # grown for the large slide, shrunk after it


@pytest.mark.parametrize(("update", "view"), [("tsu", "state"), ("global", "state"), ("tsu", "lowres")])
def test_observation_buffer_follows_the_engine(wide_dataset, models, update, view):
    """``copy=False`` observations are kept current row by row, also through steps nobody observed
    (``observe=False``, as the structured PPO path runs) and through rows growing and shrinking."""
    hafed, tsu = models
    kw = {"dataset": wide_dataset, "hafed": hafed, "tsu": tsu, "progress": False, "budget": 0.1}
    vec = WSIZoomVectorEnv(num_envs=3, copy=False, update=update, agent_view=view, **kw)
    fresh = WSIZoomVectorEnv(num_envs=3, copy=True, update=update, agent_view=view, **kw)
    batch, p = vec.batch, vec.max_patches
    obs, info = vec.reset(seed=5)
    fresh.reset(seed=5)
    rng = np.random.default_rng(0)
    rows_seen = set()
    for step in range(80):
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in info["action_mask"]])
        vec.observe = step % 7 not in (2, 3)  # some steps observed by nobody
        obs, _, _, _, info = vec.step(actions)
        fresh_obs, *_ = fresh.step(actions)
        t = batch.tensors
        rows_seen.add(tuple(t.slots.base))
        if not vec.observe:
            continue
        state = obs["state"].reshape(3, p, -1)
        for e in range(3):
            truth = t.z[e] if view == "lowres" else t.rows(e)
            np.testing.assert_array_equal(state[e, : batch.n[e]], truth.numpy())
            assert not state[e, batch.n[e] :].any()
        np.testing.assert_array_equal(obs["state"], fresh_obs["state"])
    assert len(rows_seen) > 1  # the rows moved during the run


def test_storage_does_not_grow_with_the_largest_slide(wide_dataset, models):
    """A 4-environment engine on small slides holds their rows, whatever the dataset's largest slide."""
    hafed, tsu = models
    vec = WSIZoomVectorEnv(
        num_envs=4, dataset=wide_dataset, hafed=hafed, tsu=tsu, progress=False, max_patches=5000
    )
    vec.reset(seed=0)
    slots = sum(rounded(int(n)) for n in vec.batch.n)
    held = vec.batch.tensors.state.shape[0]
    assert slots <= held <= (1 + HEADROOM) * slots + ROW_STEP
    assert vec.batch.tensors.state.shape[1] == vec.dim
    assert slots < int(vec.batch.n.sum()) + 4 * ROW_STEP  # each slot its own slide's rows, rounded up
