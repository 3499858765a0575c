"""WSIZoom-v0: spaces, masks, transitions, rewards, episode length, checkers, determinism, render."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wsigym  # noqa: F401  (registers the environments)
import zoo
from wsigym.envs.slide_source import budget_steps
from wsigym.envs.zoom import WSIZoomEnv
from wsigym.envs.zoom_batch import OBSERVATION_KEYS


def first_legal(info: dict) -> int:
    return int(np.flatnonzero(info["action_mask"])[0])


def full_ce(env: WSIZoomEnv, obs: dict, label: int) -> float:
    p = env.max_patches
    s = torch.as_tensor(obs["state"]).reshape(1, p, -1)
    m = torch.as_tensor(obs["patch_mask"]).bool()[None]
    with torch.no_grad():
        logits = env.hafed.classify(s, m)["logits"]
    return float(F.cross_entropy(logits, torch.tensor([label])))


def run_episode(env: WSIZoomEnv, seed: int, policy=first_legal):
    obs, info = env.reset(seed=seed)
    trace = [(obs, 0.0, False, False, info)]
    done = False
    while not done:
        obs, r, term, trunc, info = env.step(policy(info))
        trace.append((obs, r, term, trunc, info))
        done = term or trunc
    return trace


def test_spaces_and_docstring(env_kwargs):
    env = WSIZoomEnv(**env_kwargs)
    p, d = env.max_patches, env.dim
    assert p == max(env.source.n_list)
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n == p
    space = env.observation_space
    assert set(space.spaces) == set(OBSERVATION_KEYS)
    assert space["state"].shape == (p * d,) and space["state"].dtype == np.float32
    assert space["coords"].shape == (p * 2,) and space["budget"].shape == (1,)
    for key in ("patch_mask", "visited", "updated", "action_mask"):
        assert space[key].shape == (p,) and space[key].dtype == np.int8
    doc = WSIZoomEnv.__doc__
    for section in (
        "Action Space",
        "Observation Space",
        "Rewards",
        "Starting State",
        "Episode End",
        "Arguments",
    ):
        assert f"## {section}" in doc
    for key in OBSERVATION_KEYS:
        assert f'``"{key}"``' in doc
    assert "ValueError" in doc
    obs, info = env.reset(seed=0)
    assert space.contains(obs)
    n = int(obs["patch_mask"].sum())
    np.testing.assert_array_equal(
        obs["state"].reshape(p, d)[:n], env.source.z[env.source.rows(env.batch.slide[0])]
    )
    assert not obs["state"].reshape(p, d)[n:].any()
    assert obs["budget"][0] == 1.0 and not obs["visited"].any() and not obs["updated"].any()
    np.testing.assert_array_equal(obs["action_mask"], info["action_mask"])
    np.testing.assert_array_equal(env.action_masks(), obs["action_mask"].astype(bool))
    assert env.action_masks().dtype == bool
    xy = obs["coords"].reshape(p, 2)[:n]
    assert xy.min() == 0.0 and xy.max() == 1.0


def test_invalid_actions_raise(env_kwargs):
    env = WSIZoomEnv(**env_kwargs, illegal_action="raise")
    obs, _info = env.reset(seed=1)
    n = int(obs["patch_mask"].sum())
    if n < env.max_patches:
        with pytest.raises(ValueError, match="padding index"):
            env.step(n)
    with pytest.raises(ValueError, match="outside"):
        env.step(env.max_patches)
    env.step(0)
    with pytest.raises(ValueError, match="already zoomed"):
        env.step(0)
    with pytest.raises(RuntimeError, match=r"before calling reset"):
        WSIZoomEnv(**env_kwargs).step(0)


def test_padding_index_raises(env_kwargs):
    env = WSIZoomEnv(**env_kwargs, illegal_action="raise")
    smallest = int(np.argmin(env.source.n_list))
    obs, _ = env.reset(seed=0, options={"slide_index": smallest})
    n = int(obs["patch_mask"].sum())
    assert n < env.max_patches
    with pytest.raises(ValueError, match="padding index"):
        env.step(env.max_patches - 1)


@pytest.mark.parametrize("budget", [0.1, 0.2, 1e-9, 1.0])
def test_budget_length(env_kwargs, budget):
    env = WSIZoomEnv(**env_kwargs, budget=budget)
    for seed in range(3):
        trace = run_episode(env, seed)
        n = int(trace[0][0]["patch_mask"].sum())
        expected = max(1, math.ceil(Fraction(str(budget)) * n))
        assert budget_steps(n, budget) == expected
        assert len(trace) - 1 == expected == trace[0][4]["budget_steps"]
        assert trace[-1][2] is True and trace[-1][3] is False
        assert all(not t[2] and not t[3] for t in trace[1:-1])
        assert trace[-1][0]["budget"][0] == 0.0
        assert trace[-1][4]["zooms"] == expected


def test_budget_end_truncate(env_kwargs):
    trace = run_episode(WSIZoomEnv(**env_kwargs, budget_end="truncate"), 0)
    assert trace[-1][2] is False and trace[-1][3] is True


@pytest.mark.parametrize("update", ["tsu", "tsu-lowres"])
def test_tsu_updates_each_row_once(env_kwargs, update):
    """The similar set is taken against the anchor's current state row (SASHA) or its low-res row."""
    env = WSIZoomEnv(**env_kwargs, budget=1.0, update=update)
    obs, info = env.reset(seed=2)
    p, d = env.max_patches, env.dim
    z = obs["state"].reshape(p, d).copy()
    n = int(obs["patch_mask"].sum())
    zn = z[:n] / np.linalg.norm(z[:n], axis=1, keepdims=True)
    v = env.source.v[env.source.rows(env.batch.slide[0])].numpy()
    writes = np.zeros(n, dtype=int)
    rng = np.random.default_rng(0)
    prev = obs
    total_tsu = 0
    for _ in range(n):
        a = int(rng.choice(np.flatnonzero(info["action_mask"])))
        obs, _, term, trunc, info = env.step(a)
        s_prev, s_new = prev["state"].reshape(p, d)[:n], obs["state"].reshape(p, d)[:n]
        changed = np.flatnonzero(np.any(s_prev != s_new, axis=1))
        anchor = prev["state"].reshape(p, d)[a] if update == "tsu" else z[a]
        similar = np.flatnonzero(zn @ (anchor / np.linalg.norm(anchor)) >= env.config.tau)
        expected = [i for i in similar if i != a and not prev["updated"][i]]
        tsu_rows = sorted(set(changed) - {a})
        assert tsu_rows == sorted(expected)  # exactly the new similar rows (a generic f_S changes every row)
        assert info["tsu_updates"] == len(expected)
        total_tsu += len(expected)
        writes[tsu_rows] += 1
        np.testing.assert_array_equal(obs["state"].reshape(p, d)[a], v[a])
        assert obs["visited"][a] and obs["updated"][a]
        np.testing.assert_array_equal(obs["updated"][:n] >= prev["updated"][:n], True)
        visited = np.flatnonzero(obs["visited"][:n])
        np.testing.assert_array_equal(obs["state"].reshape(p, d)[visited], v[visited])  # zoomed rows hold V
        prev = obs
        if term or trunc:
            break
    assert writes.max() <= 1 and total_tsu > 0


def test_tsu_row_values(env_kwargs):
    env = WSIZoomEnv(**env_kwargs)
    obs, _ = env.reset(seed=4)
    p, d = env.max_patches, env.dim
    z = torch.as_tensor(obs["state"]).reshape(p, d).clone()
    n = int(obs["patch_mask"].sum())
    v = env.source.v[env.source.rows(env.batch.slide[0])]
    zn = F.normalize(z[:n], dim=-1)
    a = int(torch.argmax((zn @ zn.T >= env.config.tau).sum(1)))  # a patch with many similar ones
    obs, *_, _info = env.step(a)
    s = torch.as_tensor(obs["state"]).reshape(p, d)
    sim = [i for i in torch.nonzero(zn @ zn[a] >= env.config.tau).flatten().tolist() if i != a]
    assert sim
    with torch.no_grad():
        expected = env.tsu(v[a].expand(len(sim), d), z[a].expand(len(sim), d), z[sim])
    torch.testing.assert_close(s[sim], expected, rtol=1e-5, atol=1e-5)


def test_absolute_cosine_counts_anticorrelated(tiny_dataset, models):
    hafed, tsu = models
    kw = {"dataset": tiny_dataset, "hafed": hafed, "tsu": tsu, "progress": False, "tau": 0.0}
    signed, absolute = WSIZoomEnv(**kw, absolute_cosine=False), WSIZoomEnv(**kw, absolute_cosine=True)
    _, i1 = signed.reset(seed=0)
    _, i2 = absolute.reset(seed=0)
    _, _, _, _, i1 = signed.step(0)
    _, _, _, _, i2 = absolute.step(0)
    n = int(signed.batch.n[0])
    assert i2["tsu_updates"] == n - 1 > i1["tsu_updates"]


def test_ablations(env_kwargs):
    envs = {rule: WSIZoomEnv(**env_kwargs, update=rule) for rule in ("tsu", "global", "none")}
    out = {}
    for rule, env in envs.items():
        obs0, _ = env.reset(seed=5)
        obs1, *_ = env.step(3)
        obs2, *_ = env.step(7)
        out[rule] = (obs0, obs1, obs2)
    p, d = envs["tsu"].max_patches, envs["tsu"].dim
    n = int(out["tsu"][0]["patch_mask"].sum())

    def changed(o_prev, o_next):
        a, b = o_prev["state"].reshape(p, d)[:n], o_next["state"].reshape(p, d)[:n]
        return set(np.flatnonzero(np.any(a != b, axis=1)).tolist())

    assert changed(out["none"][0], out["none"][1]) == {3}
    assert changed(out["none"][1], out["none"][2]) == {7}
    assert out["none"][2]["updated"][:n].sum() == 2
    # global: every valid row changes on the first zoom, every not-zoomed row on the second
    assert changed(out["global"][0], out["global"][1]) == set(range(n))
    assert changed(out["global"][1], out["global"][2]) == set(range(n)) - {3}
    assert out["global"][2]["updated"][:n].all()
    # tsu: in between
    tsu_changed = changed(out["tsu"][0], out["tsu"][1])
    assert {3} <= tsu_changed < set(range(n))
    with pytest.raises(ValueError, match="update must be one of"):
        WSIZoomEnv(**env_kwargs, update="everything")


def test_global_rows_are_f_s_of_the_low_res_rows(env_kwargs):
    """Every not-yet-zoomed row is f_S([V(a), Z(a), Z(i)]) after each zoom (the factored f_S included)."""
    env = WSIZoomEnv(**env_kwargs, update="global")
    obs, _ = env.reset(seed=5)
    p, d = env.max_patches, env.dim
    n = int(obs["patch_mask"].sum())
    z = torch.as_tensor(obs["state"].reshape(p, d)[:n].copy())
    zoomed = []
    for a in (3, 7, 1):
        obs, *_ = env.step(a)
        zoomed.append(a)
        s = torch.as_tensor(obs["state"].reshape(p, d)[:n])
        rest = [i for i in range(n) if i not in zoomed]
        with torch.no_grad():
            expected = env.tsu(s[a].expand(len(rest), d), z[a].expand(len(rest), d), z[rest])
        torch.testing.assert_close(s[rest], expected, rtol=1e-4, atol=1e-5)


def test_lowres_agent_view_shows_z_while_the_classifier_reads_the_updated_state(env_kwargs):
    seen = WSIZoomEnv(**env_kwargs, update="global", agent_view="lowres")
    full = WSIZoomEnv(**env_kwargs, update="global")
    obs, _ = seen.reset(seed=5)
    obs_full, _ = full.reset(seed=5)
    z = obs["state"].copy()
    np.testing.assert_array_equal(z, obs_full["state"])  # S_0 = Z
    for action in (3, 7, 1):
        obs, r, _, _, info = seen.step(action)
        obs_full, r_full, _, _, info_full = full.step(action)
        np.testing.assert_array_equal(obs["state"], z)  # the agent never sees a zoom
        np.testing.assert_array_equal(obs["updated"], obs["visited"])
        np.testing.assert_array_equal(obs["visited"], obs_full["visited"])
        np.testing.assert_array_equal(obs["action_mask"], obs_full["action_mask"])
        assert r == r_full and info["ce"] == info_full["ce"]  # same transition, same reward
        assert r == pytest.approx(-full_ce(full, obs_full, info["label"]), abs=1e-5)
        assert r != pytest.approx(-full_ce(seen, obs, info["label"]), abs=1e-5)  # not the reward of Z
    with pytest.raises(ValueError, match="agent_view must be one of"):
        WSIZoomEnv(**env_kwargs, agent_view="everything")


@pytest.mark.parametrize("update", ["tsu", "global", "none"])
def test_reward_is_minus_full_ce(env_kwargs, update):
    env = WSIZoomEnv(**env_kwargs, update=update, budget=1.0)
    rng = np.random.default_rng(1)
    obs, info = env.reset(seed=3)
    label = info["label"]
    assert info["ce"] == pytest.approx(full_ce(env, obs, label), abs=1e-5)
    done = False
    while not done:
        obs, r, term, trunc, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
        ce = full_ce(env, obs, label)
        assert r == pytest.approx(-ce, abs=1e-5)
        with torch.no_grad():
            probs = torch.softmax(
                env.hafed.classify(
                    torch.as_tensor(obs["state"]).reshape(1, env.max_patches, -1),
                    torch.as_tensor(obs["patch_mask"]).bool()[None],
                )["logits"],
                -1,
            )[0]
        np.testing.assert_allclose(info["probability"], probs.numpy(), atol=1e-5)
        assert info["prediction"] == int(probs.argmax())
        done = term or trunc


@pytest.mark.parametrize("rule", ["delta_ce", "delta_margin", "terminal"])
def test_reward_options(env_kwargs, rule):
    env = WSIZoomEnv(**env_kwargs, reward=rule)
    trace = run_episode(env, 6)
    label = trace[0][4]["label"]
    ces = [full_ce(env, t[0], label) for t in trace]
    rewards = [t[1] for t in trace[1:]]
    if rule == "delta_ce":
        np.testing.assert_allclose(rewards, np.array(ces[:-1]) - np.array(ces[1:]), atol=1e-5)
    elif rule == "delta_margin":  # two classes: the log-odds is log p_y - log p_other = log(e^CE - 1)
        odds = -np.log(np.expm1(np.array(ces, dtype=np.float64)))
        np.testing.assert_allclose(rewards, odds[1:] - odds[:-1], atol=1e-4)
        assert np.abs(rewards).max() > 0  # the zooms moved HAFED
    else:
        np.testing.assert_allclose(rewards[:-1], 0.0)
        assert rewards[-1] == pytest.approx(-ces[-1], abs=1e-5)


def test_evidence_reward(env_kwargs):
    """r_t = p(y | HAFED on the zoomed row alone) - mean over the slide's patches of the same; after a
    zoom the state holds V(a) at a, and with budget 1 every patch gets zoomed."""
    env = WSIZoomEnv(**env_kwargs, reward="evidence", budget=1.0)
    obs, info = env.reset(seed=5)
    d, n = obs["state"].size // env.max_patches, int(obs["patch_mask"].sum())
    probs, rewards, done = [], [], False
    while not done:
        a = first_legal(info)
        obs, r, term, trunc, info = env.step(a)
        row = torch.as_tensor(obs["state"]).reshape(env.max_patches, d)[a]
        with torch.no_grad():
            probs.append(float(env.hafed.classify(row[None, None])["logits"].softmax(-1)[0, info["label"]]))
        rewards.append(r)
        done = term or trunc
    assert len(rewards) == n
    np.testing.assert_allclose(rewards, np.array(probs) - np.mean(probs), atol=1e-5)
    assert np.ptp(rewards) > 0


def test_hit_reward_is_the_ground_truth_hit(env_kwargs):
    env = WSIZoomEnv(**env_kwargs, reward="hit")
    trace = run_episode(env, 6)
    hits = [float(t[4]["hit_tumour"]) for t in trace[1:]]
    assert [t[1] for t in trace[1:]] == hits
    assert (
        env.unwrapped.batch.tumour_np[0, : env.unwrapped.batch.n[0]].max() > 0
    )  # the tiny slides hold tumour


def test_info_tumour_hits(env_kwargs, make_tiny_dataset, models):
    env = WSIZoomEnv(**env_kwargs)
    _, info = env.reset(seed=0)
    truth = env.batch.tumour_np[0]
    _, _, _, _, info = env.step(0)
    assert info["hit_tumour"] == bool(truth[0] > 0) and info["tumour_fraction"] == truth[0]
    hafed, tsu = models
    env2 = WSIZoomEnv(
        dataset=make_tiny_dataset(truth=False, name="no-truth"), hafed=hafed, tsu=tsu, progress=False
    )
    env2.reset(seed=0)
    *_, info2 = env2.step(0)
    assert "hit_tumour" not in info2 and {"prediction", "probability", "zooms", "label"} <= set(info2)


def test_mask_updated(env_kwargs):
    env = WSIZoomEnv(**env_kwargs, mask_updated=True, budget=1.0)
    obs, info = env.reset(seed=2)
    done = False
    while not done:
        obs, _r, term, trunc, info = env.step(first_legal(info))
        np.testing.assert_array_equal(info["action_mask"], obs["patch_mask"] & (1 - obs["updated"]))
        done = term or trunc
    assert term and not trunc  # ran out of legal actions or budget
    assert not obs["action_mask"].any() or obs["budget"][0] == 0.0
    plain = WSIZoomEnv(**env_kwargs)
    obs, info = plain.reset(seed=2)
    obs, *_, info = plain.step(int(np.argmax(obs["patch_mask"])))
    updated_only = obs["updated"] & (1 - obs["visited"])
    assert (info["action_mask"][updated_only == 1] == 1).all()


def test_options_and_slide_ids(env_kwargs):
    env = WSIZoomEnv(**env_kwargs)
    assert env.slide_ids == env_kwargs["dataset"].split("train")
    _, info = env.reset(seed=0, options={"slide_id": env.slide_ids[2]})
    assert info["slide_id"] == env.slide_ids[2] == env.slide_id
    with pytest.raises(ValueError, match="not in split"):
        env.reset(options={"slide_id": "nope"})
    with pytest.raises(ValueError, match="max_patches"):
        WSIZoomEnv(**env_kwargs, max_patches=5)
    with pytest.raises(ValueError, match="budget"):
        WSIZoomEnv(**env_kwargs, budget=0.0)
    big = WSIZoomEnv(**env_kwargs, max_patches=80)
    obs, _ = big.reset(seed=0)
    assert obs["state"].shape == (80 * big.dim,) and big.observation_space.contains(obs)


def test_determinism(env_kwargs):
    def trajectory(seed):
        env = WSIZoomEnv(**env_kwargs)
        rng = np.random.default_rng(seed)
        out = []
        for ep in range(3):
            obs, info = env.reset(seed=seed) if ep == 0 else env.reset()
            out.append((info["slide_id"], obs["state"].copy()))
            done = False
            while not done:
                obs, r, term, trunc, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
                out.append((r, obs["state"].copy(), obs["updated"].copy()))
                done = term or trunc
        return out

    a, b, c = trajectory(11), trajectory(11), trajectory(12)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    assert [x[0] for x in a if isinstance(x[0], str)] != [x[0] for x in c if isinstance(x[0], str)] or len(
        a
    ) != len(c)


def test_gymnasium_check_env(env_kwargs):
    from gymnasium.utils.env_checker import check_env

    env = gym.make("WSIZoom-v0", **env_kwargs, render_mode="rgb_array")
    # check_env steps once with an unseeded, mask-unaware ``action_space.sample()`` (padding indices
    # raise by design, see equal_size_kwargs): seed the space so the run is deterministic.
    env.unwrapped.action_space.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


def equal_size_kwargs(models, make_tiny_dataset) -> dict:
    """Slides of one size (no padding) and a one-zoom budget: then every index a checker samples at
    random (``action_space.sample()``, mask-unaware) is legal, since each episode takes one step.
    Illegal actions raise by design (tested above), which no mask-unaware random checker can satisfy."""
    hafed, tsu = models
    return {
        "dataset": make_tiny_dataset(n=30, name="equal"),
        "hafed": hafed,
        "tsu": tsu,
        "progress": False,
        "budget": 1e-9,
    }


def test_gymnasium_check_env_random_actions(models, make_tiny_dataset):
    from gymnasium.utils.env_checker import check_env

    env = gym.make("WSIZoom-v0", **equal_size_kwargs(models, make_tiny_dataset), render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


def test_sb3_check_env(models, make_tiny_dataset):
    from stable_baselines3.common.env_checker import check_env

    env = WSIZoomEnv(**equal_size_kwargs(models, make_tiny_dataset))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, warn=True)


def test_registered_ablations(env_kwargs):
    for env_id, rule in (
        ("WSIZoom-v0", "tsu"),
        ("WSIZoomGlobal-v0", "global"),
        ("WSIZoomNoUpdate-v0", "none"),
    ):
        env = gym.make(env_id, **env_kwargs)
        assert env.unwrapped.config.update == rule
        env.close()


def test_render(env_kwargs):
    env = WSIZoomEnv(**env_kwargs, render_mode="rgb_array")
    env.reset(seed=0)
    env.step(0)
    env.step(1)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    assert frame.shape[0] > 50 and frame.shape[1] > 100
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 10
    with pytest.raises(ValueError, match="render_mode"):
        WSIZoomEnv(**env_kwargs, render_mode="human")


def _sasha_f_s(tsu, x: torch.Tensor) -> torch.Tensor:
    """SASHA's ``FGlobal.forward`` (``modules/fglobal_mlp.py``) written out: fc1 -> GELU -> fc2 -> LayerNorm."""
    fc1, fc2, norm = tsu.mlp[0], tsu.mlp[2], tsu.mlp[3]
    h = F.gelu(F.linear(x, fc1.weight, fc1.bias))
    return F.layer_norm(F.linear(h, fc2.weight, fc2.bias), (x.shape[-1] // 3,), norm.weight, norm.bias)


def _sasha_step(state, mask, picked, a, v, tsu, tau):
    """One step of SASHA's ``WSICosineObservationEnv.step`` (``envs/WSI_cosine_env.py``), transcribed.

    ``state (N, d)`` is the current state, ``mask (N,)`` 1 for rows not yet zoomed or TSU-updated,
    ``picked`` the zoomed patches so far; all updated in place.
    """
    picked.append(a)
    unmasked = set((mask == 1).nonzero()[:, 0].tolist())  # taken before this step's masking
    cos = torch.cosine_similarity(state, state[a].unsqueeze(0), dim=-1)
    hits = (torch.abs(cos) >= tau).nonzero()[:, 0]
    mask[hits] = 0
    targets = sorted(set(hits[hits != a].tolist()) & unmasked)
    if not targets:
        state[a] = v[a]
    else:
        n = len(targets)
        x = torch.cat((v[a].repeat(n, 1), state[a].repeat(n, 1), state[targets]), dim=1)
        state[targets] = _sasha_f_s(tsu, x)
    state[picked] = v[picked]


def test_tsu_transition_equals_a_transcription_of_sasha_step(tiny_dataset, models):
    """``update="tsu"`` with ``|cos|`` and SASHA's f_S reproduces SASHA's step, state and reward, zoom by zoom.

    The zooms deliberately include patches TSU-updated by an earlier zoom (where the anchor
    ``S_t(a)`` differs from ``Z(a)``); the low-res variant is checked to disagree there.
    """
    hafed, _ = models
    torch.manual_seed(7)
    tsu = zoo.create_model("tsu", in_dim=hafed.config.in_dim, tau=0.9, similarity="abs_cosine").eval()
    for p in tsu.parameters():  # non-trivial LayerNorm affine as well
        torch.nn.init.normal_(p, std=0.3)
    kw = {"dataset": tiny_dataset, "hafed": hafed, "tsu": tsu, "progress": False, "budget": 0.5}
    env, lowres = WSIZoomEnv(**kw), WSIZoomEnv(**kw, update="tsu-lowres")
    assert env.config.absolute_cosine and env.config.tau == 0.9
    obs, info = env.reset(seed=3)
    lowres.reset(options={"slide_index": int(env.batch.slide[0])})
    n, p, d = int(obs["patch_mask"].sum()), env.max_patches, env.dim
    z = torch.as_tensor(obs["state"]).reshape(p, d)[:n].clone()
    v = env.source.v[env.source.rows(env.batch.slide[0])]
    label = torch.tensor([info["label"]])
    state, mask, picked = z.clone(), torch.ones(n), []
    rng = np.random.default_rng(0)
    reanchored = differs = 0
    done = False
    while not done:
        updated_only = np.flatnonzero((obs["updated"][:n] == 1) & (obs["visited"][:n] == 0))
        legal = np.flatnonzero(info["action_mask"])
        a = int(rng.choice(updated_only if len(updated_only) else legal))  # prefer TSU-updated anchors
        reanchored += bool(len(updated_only))
        with torch.no_grad():
            _sasha_step(state, mask, picked, a, v, tsu, 0.9)
            expected_reward = -F.cross_entropy(hafed.classify(state[None])["logits"], label).item()
        obs, r, term, trunc, info = env.step(a)
        lobs, *_ = lowres.step(a)
        assert mask.sum() > 0  # SASHA's "all patches visited" freeze (not reproduced) never applies here
        got = torch.as_tensor(obs["state"]).reshape(p, d)
        torch.testing.assert_close(got[:n], state, rtol=1e-5, atol=1e-5)
        assert float(got[n:].abs().sum()) == 0.0
        np.testing.assert_array_equal(obs["updated"][:n], (mask == 0).numpy())
        assert r == pytest.approx(expected_reward, rel=1e-5, abs=1e-6)
        differs += not np.allclose(lobs["state"], obs["state"], atol=1e-5)
        done = term or trunc
    assert reanchored >= 2 and differs >= 1
