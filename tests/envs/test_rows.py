"""The engine holds the real rows of its current slides, not the dataset's largest slide (zoom_batch docstring)."""

from __future__ import annotations

import numpy as np
import pytest

from wsigym.envs.vector import WSIZoomVectorEnv
from wsigym.envs.zoom import WSIZoomEnv
from wsigym.envs.zoom_batch import ROW_STEP


@pytest.fixture(scope="module")
def wide_dataset(make_tiny_dataset):
    """Slides of 10 to 300 patches, so that the engine's rows must grow and shrink."""
    return make_tiny_dataset(count=14, n=(10, 300), seed=3, name="wide")


def rounded(n: int, cap: int) -> int:
    return min(-(-n // ROW_STEP) * ROW_STEP, cap)


def test_rows_grow_and_shrink_with_the_slide(wide_dataset, models):
    hafed, tsu = models
    env = WSIZoomEnv(dataset=wide_dataset, hafed=hafed, tsu=tsu, progress=False, budget=0.2)
    src, batch = env.source, env.batch
    sizes = dict(zip(src.slide_ids, src.n_list, strict=True))
    small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    assert 2 * rounded(sizes[small], env.max_patches) <= sizes[large]  # the data make a shrink necessary
    seen = []
    for slide in [small, large, small, *sorted(sizes)]:
        obs, _ = env.reset(seed=0, options={"slide_id": slide})
        n, rows = sizes[slide], batch.rows
        seen.append(rows)
        assert n <= rows < 2 * rounded(n, env.max_patches) or rows == rounded(n, env.max_patches)
        assert batch.tensors.state.shape[1] == batch.tensors.z.shape[1] == rows
        assert batch.classifier.row_logits.shape[1] == rows
        state = obs["state"].reshape(env.max_patches, -1)
        np.testing.assert_array_equal(state[:n], src.episode_arrays(src.slide_ids.index(slide))[0].numpy())
        assert not state[n:].any()
    assert seen[:3] == [
        rounded(sizes[small], env.max_patches),
        rounded(sizes[large], env.max_patches),
        seen[0],
    ]


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
        rows_seen.add(batch.rows)
        if not vec.observe:
            continue
        truth = (batch.tensors.z if view == "lowres" else batch.tensors.state).numpy()
        state = obs["state"].reshape(3, p, -1)
        np.testing.assert_array_equal(state[:, : batch.rows], truth)
        assert not state[:, batch.rows :].any()
        np.testing.assert_array_equal(obs["state"], fresh_obs["state"])
        for e in range(3):
            assert not state[e, batch.n[e] :].any()
    assert len(rows_seen) > 1  # the rows changed during the run


def test_storage_does_not_grow_with_the_largest_slide(wide_dataset, models):
    """A 4-environment engine on small slides holds their rows, whatever the dataset's largest slide."""
    hafed, tsu = models
    vec = WSIZoomVectorEnv(
        num_envs=4, dataset=wide_dataset, hafed=hafed, tsu=tsu, progress=False, max_patches=5000
    )
    vec.reset(seed=0)
    need = int(vec.batch.n.max())
    assert vec.batch.tensors.state.shape == (4, rounded(need, 5000), vec.dim)
    assert vec.batch.rows < 5000
