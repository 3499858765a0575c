"""A padding cap for small-memory agents: ``cap_patches`` leaves out slides larger than the cap."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from wsigym.envs.padding import cap_patches, dataset_patch_counts
from wsigym.errors import DataError


def test_cap_leaves_out_larger_slides(tiny_dataset, models):
    hafed, tsu = models
    counts = dataset_patch_counts(tiny_dataset)
    cap = int(np.median(list(counts.values())))
    capped = cap_patches(tiny_dataset, cap)
    assert capped.skipped == {s: n for s, n in counts.items() if n > cap} and capped.skipped
    kept_train = [s for s in tiny_dataset.split("train") if counts[s] <= cap]
    assert capped.split("train") == kept_train and kept_train
    kw = {"hafed": hafed, "tsu": tsu, "progress": False, "split": "train"}
    with pytest.raises(ValueError, match="smaller than the largest slide"):
        gym.make("WSIZoom-v0", dataset=tiny_dataset, max_patches=cap, **kw)
    env = gym.make("WSIZoom-v0", dataset=capped, max_patches=cap, **kw)
    assert env.observation_space["state"].shape == (cap * env.unwrapped.dim,)
    assert env.unwrapped.slide_ids == kept_train
    seen = {env.reset(seed=i)[1]["slide_id"] for i in range(40)}
    assert seen <= set(kept_train) and len(seen) > 1
    big = next(s for s in tiny_dataset.split("train") if s in capped.skipped)
    with pytest.raises(ValueError, match="not in split"):
        env.reset(options={"slide_id": big})
    with pytest.raises(
        DataError, match=rf"{big}.*{capped.skipped[big]} patches, more than the cap max_patches={cap}"
    ):
        capped.load(big)
    full = gym.make("WSIZoom-v0", dataset=tiny_dataset, **kw)  # the kept slides' episodes are unchanged
    for env_ in (env, full):
        env_.reset(seed=0, options={"slide_id": kept_train[0]})
    a = int(np.flatnonzero(env.unwrapped.action_masks())[0])
    obs, reward, *_ = env.step(a)
    obs_full, reward_full, *_ = full.step(a)
    n = counts[kept_train[0]] * env.unwrapped.dim
    assert reward == pytest.approx(reward_full) and np.allclose(obs["state"][:n], obs_full["state"][:n])
    with pytest.raises(DataError, match="no slide has at most"):
        cap_patches(tiny_dataset, 1)
    with pytest.raises(ValueError, match="integer >= 1"):
        cap_patches(tiny_dataset, 0)
