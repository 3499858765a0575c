"""PatchPolicy: shapes, permutation equivariance, any P, masking, warm start, SB3 VecEnv adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported

from wsigym.agents.policy import (
    EXTRA_CHANNELS,
    PAD_LOGIT,
    PatchPolicy,
    patch_rows,
    standardise_state,
    warm_start_from_hafed,
)
from wsigym.agents.saved_policy import PolicyAgent, _policy_for
from wsigym.agents.sb3_vec import make_sb3_vec_env
from wsigym.envs.zoom_batch import observation_space

P, D = 12, 16


def _obs(b: int, p: int, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    valid = torch.zeros(b, p, dtype=torch.int8)
    valid[:, :n] = 1
    visited = torch.zeros(b, p, dtype=torch.int8)
    visited[:, 1] = 1
    return {
        "state": torch.randn(b, p * D, generator=g) * valid.repeat_interleave(D, 1),
        "patch_mask": valid,
        "visited": visited,
        "updated": visited.clone(),
        "coords": torch.rand(b, p * 2, generator=g),
        "budget": torch.full((b, 1), 0.5),
        "action_mask": valid * (1 - visited),
    }


def _policy(hidden: int = 16, standardise: bool = False, tokens: str = "state+context") -> PatchPolicy:
    torch.manual_seed(0)
    return _policy_for(P, D, hidden, 8, hidden, standardise, tokens)


def test_shapes_and_masking():
    policy = _policy()
    obs = _obs(3, P, n=9)
    features = policy.extract_features(obs)
    assert features.rows.shape == (3 * 9, D + EXTRA_CHANNELS) and features.valid.shape == (3, P)
    logits, latent_vf = policy.mlp_extractor(features)
    assert logits.shape == (3, P) and latent_vf.shape == (3, 8)
    masks = obs["action_mask"].numpy().astype(bool)
    actions, values, log_prob = policy(obs, deterministic=False, action_masks=masks)
    assert values.shape == (3, 1)
    assert masks[np.arange(3), actions.numpy()].all()
    dist = policy.get_distribution(obs, action_masks=masks)
    probs = dist.distribution.probs.detach().numpy()
    assert np.all(probs[~masks] == 0) and np.allclose(probs.sum(1), 1)
    # the same masks are applied when PPO re-evaluates the actions (SASHA pitfall 1)
    _, log_prob2, _ = policy.evaluate_actions(obs, actions, action_masks=masks)
    assert torch.allclose(log_prob, log_prob2)
    for _ in range(20):  # sampling never picks a masked patch
        a, _, _ = policy(obs, action_masks=masks)
        assert masks[np.arange(3), a.numpy()].all()


@pytest.mark.parametrize("standardise", [False, True])
def test_permutation_equivariant_and_any_p(standardise):
    policy = _policy(standardise=standardise)
    obs = _obs(1, P, n=P)
    perm = torch.randperm(P, generator=torch.Generator().manual_seed(1))
    permuted = {
        k: (v.reshape(1, P, -1)[:, perm].reshape(1, -1) if v.shape[-1] in (P, P * D, P * 2) else v)
        for k, v in obs.items()
    }
    with torch.no_grad():
        logits, vf = policy.mlp_extractor(policy.extract_features(obs))
        logits_p, vf_p = policy.mlp_extractor(policy.extract_features(permuted))
    assert torch.allclose(logits[:, perm], logits_p, atol=1e-5)
    assert torch.allclose(vf, vf_p, atol=1e-5)  # the critic pools: invariant
    # the same weights score a bigger padding; padding rows do not change the real rows' logits or the value
    bigger = _obs(1, P + 7, n=P)
    for k in ("state", "coords"):
        width = D if k == "state" else 2
        bigger[k][:, : P * width] = obs[k]
    for k in ("patch_mask", "visited", "updated", "action_mask"):
        bigger[k][:, :P] = obs[k]
    with torch.no_grad():
        logits_b, vf_b = policy.mlp_extractor(patch_rows(bigger, D, policy.standardise))
    assert torch.allclose(logits_b[:, :P], logits, atol=1e-5)
    assert torch.allclose(vf_b, vf, atol=1e-5)


@pytest.mark.parametrize(
    ("standardise", "tokens"),
    [(False, "state+context"), (True, "state+context"), (False, "state"), (True, "state")],
)
def test_policy_agent_incremental_equals_full_forward(standardise, tokens):
    """The cached gates (and, for state-only tokens, cached row logits) equal a full forward pass
    after rows change, over several steps, and on the next episode's smaller slide."""
    policy = _policy(standardise=standardise, tokens=tokens)
    agent, full = PolicyAgent(policy), PolicyAgent(policy, incremental=False)
    obs = {k: v[0].numpy() for k, v in _obs(1, P, n=10).items()}
    assert np.allclose(agent.logits(obs), full.logits(obs), atol=1e-5)
    obs["state"] = obs["state"].copy()
    for step, row in enumerate((3, 7, 3)):
        obs["state"][row * D : (row + 1) * D] += 1.0  # a TSU-updated, later zoomed row
        obs["budget"] = np.array([0.25 * (3 - step)], dtype=np.float32)
        logits = agent.logits(obs)
        assert np.allclose(logits, full.logits(obs), atol=1e-5)
        assert np.all(logits[10:] == PAD_LOGIT)
    agent.reset()
    small = {k: v[0].numpy() for k, v in _obs(1, P, n=6).items()}
    assert np.allclose(agent.logits(small), full.logits(small), atol=1e-5)
    action = agent(obs, {})
    assert obs["action_mask"][action] == 1
    obs["action_mask"] = np.zeros(P, dtype=np.int8)
    with pytest.raises(ValueError, match="no legal action"):
        agent(obs, {})


def test_standardise_state_per_observation():
    obs = _obs(2, P, n=7)
    obs["state"] = obs["state"] * 0.1 + 5.0 * obs["patch_mask"].repeat_interleave(D, 1)  # a large offset
    obs["state"][1] *= 3.0
    features = patch_rows(obs, D)
    rows = standardise_state(features, D)
    for b in range(2):
        state = rows[b * 7 : (b + 1) * 7, :D]
        assert torch.allclose(state.mean(0), torch.zeros(D), atol=1e-5)
        assert torch.allclose(state.square().mean(), torch.tensor(1.0), atol=1e-4)
    assert torch.equal(rows[:, D:], features.rows[:, D:])  # the extra channels pass unchanged
    # a common offset and scale of one observation's rows do not change the standardised policy's logits
    policy = _policy(standardise=True)
    shifted = dict(obs, state=obs["state"] * 2.0 + 1.0 * obs["patch_mask"].repeat_interleave(D, 1))
    with torch.no_grad():
        a = policy.mlp_extractor.forward_actor(policy.extract_features(obs))
        b = policy.mlp_extractor.forward_actor(policy.extract_features(shifted))
    assert torch.allclose(a, b, atol=1e-4)


def test_warm_start_copies_hafed_attention(models):
    hafed, _ = models
    policy = _policy(hidden=hafed.config.attn_dim)
    warm_start_from_hafed(policy, hafed)
    obs = _obs(2, P, n=P)
    state = obs["state"].reshape(2, P, D)
    with torch.no_grad():
        expected = hafed.attention_logits(state).mean(1)
        got = policy.mlp_extractor.forward_actor(policy.extract_features(obs))
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="attn_dim"):
        warm_start_from_hafed(_policy(hidden=hafed.config.attn_dim + 1), hafed)
    with pytest.raises(ValueError, match="standardise"):
        warm_start_from_hafed(_policy(hidden=hafed.config.attn_dim, standardise=True), hafed)


def test_observation_space_matches_env(env_kwargs):
    env = make_sb3_vec_env("WSIZoom-v0", n_envs=2, seed=0, **env_kwargs)
    space = env.observation_space
    assert space == observation_space(env.venv.max_patches, env.venv.dim)
    env.close()


def test_sb3_vec_env_autoreset_and_masks(env_kwargs):
    env = make_sb3_vec_env("WSIZoom-v0", n_envs=3, seed=0, budget=0.1, **env_kwargs)
    assert is_masking_supported(env)
    obs = env.reset()
    assert obs["state"].shape == (3, env.venv.max_patches * env.venv.dim)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(15):
        masks = get_action_masks(env)
        assert masks.shape == (3, env.venv.max_patches) and masks.dtype == bool
        assert np.array_equal(masks, obs["action_mask"].astype(bool))
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
        obs, rewards, dones, infos = env.step(actions)
        assert rewards.shape == (3,) and len(infos) == 3
        for e in np.flatnonzero(dones):
            ended += 1
            term = infos[e]["terminal_observation"]
            assert term["budget"][0] == 0.0 and term["visited"].sum() == infos[e]["zooms"]
            assert infos[e]["zooms"] == infos[e]["budget_steps"]
            assert obs["visited"][e].sum() == 0 and obs["budget"][e, 0] == 1.0  # same-step reset
            assert infos[e]["TimeLimit.truncated"] is False
    assert ended > 0
    assert env.get_attr("hafed")[0].family == "hafed"
    env.close()


def test_maskable_ppo_learns_on_vec_env(env_kwargs):
    env = make_sb3_vec_env("WSIZoom-v0", n_envs=2, seed=0, budget=0.1, **env_kwargs)
    model = MaskablePPO(
        PatchPolicy, env, n_steps=16, batch_size=16, n_epochs=2, seed=0, policy_kwargs={"hidden": 16}
    )
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(64)
    after = list(model.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert model.num_timesteps >= 64
    env.close()


def test_logit_scaling_keeps_greedy_action(models):
    from wsigym.agents.policy import scale_actor_logits

    hafed, _ = models
    policy = _policy(hidden=hafed.config.attn_dim)
    warm_start_from_hafed(policy, hafed)
    obs = _obs(2, P, n=9)
    with torch.no_grad():
        before = policy.mlp_extractor.forward_actor(policy.extract_features(obs))
    scale = scale_actor_logits(policy, obs, target_std=3.0)
    with torch.no_grad():
        after = policy.mlp_extractor.forward_actor(policy.extract_features(obs))
    assert torch.allclose(after[:, :9], before[:, :9] * scale, rtol=1e-4, atol=1e-5)
    assert torch.equal(after[:, :9].argmax(1), before[:, :9].argmax(1))
    assert after[:, :9].std(1).mean() == pytest.approx(3.0, rel=1e-3)
