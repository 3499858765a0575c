"""The structured PPO path (episodes stored as changed rows) against the plain padded-observation path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor

from wsigym.agents.policy import PatchPolicy
from wsigym.agents.sb3_vec import make_sb3_vec_env
from wsigym.agents.segment_ppo import SegmentMaskablePPO, vector_env_of
from wsigym.agents.segments import EpisodeRows


class RecordObservations(BaseCallback):
    """Keeps the engine's true padded observation before every step of the rollout (timestep ``t``)."""

    def __init__(self) -> None:
        super().__init__()
        self.obs: list[dict[str, np.ndarray]] = []

    def _snapshot(self) -> None:
        self.obs.append(vector_env_of(self.training_env).batch.observation(copy=True))

    def _on_rollout_start(self) -> None:
        self.obs = []
        self._snapshot()

    def _on_step(self) -> bool:
        self._snapshot()  # after the step and any autoreset: the observation of the next timestep
        return True


def _model(
    env_kwargs, n_envs=3, n_steps=12, update="tsu", device="cpu", **policy_kwargs
) -> SegmentMaskablePPO:
    """``update``: the rule's name, or a dict of environment options (``{"update": ..., "agent_view": ...}``)."""
    options = update if isinstance(update, dict) else {"update": update}
    env_kwargs = {**env_kwargs, **options, "device": device}
    if device != "cpu":  # the env moves its models: keep the session's CPU fixtures where they are
        env_kwargs.update(hafed=copy.deepcopy(env_kwargs["hafed"]), tsu=copy.deepcopy(env_kwargs["tsu"]))
    env = make_sb3_vec_env("WSIZoom-v0", n_envs=n_envs, seed=0, budget=0.3, **env_kwargs)
    return SegmentMaskablePPO(
        PatchPolicy,
        env,
        n_steps=n_steps,
        batch_size=16,
        n_epochs=1,
        seed=0,
        device=device,
        policy_kwargs={"hidden": 8, "critic_attention": 4, "critic_hidden": 8, **policy_kwargs},
    )


def _rollout(model: SegmentMaskablePPO) -> RecordObservations:
    recorder = RecordObservations()
    model._setup_learn(model.n_steps * model.n_envs, callback=None)
    recorder.init_callback(model)
    assert model.collect_rollouts(model.env, recorder, model.rollout_buffer, model.n_steps)
    return recorder


def _plain_observations(recorder, buffer, positions, device="cpu") -> dict[str, torch.Tensor]:
    """The recorded observations of flat buffer positions (``env * n_steps + step``)."""
    steps, envs = positions % buffer.buffer_size, positions // buffer.buffer_size
    keys = recorder.obs[0].keys()
    stacked = {k: np.stack([recorder.obs[t][k][e] for t, e in zip(steps, envs)]) for k in keys}
    return obs_as_tensor(stacked, torch.device(device))


CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = [
    pytest.param({"tokens": "state+context"}, "tsu", "cuda", id="context-cuda", marks=CUDA_MARKS),
    pytest.param({"tokens": "state"}, "tsu", "cuda", id="state-cuda", marks=CUDA_MARKS),  # held sums
]
CASES = [
    pytest.param({"tokens": "state+context"}, "tsu", id="context"),
    pytest.param({"tokens": "state+context", "standardise": True}, "tsu", id="context-standardised"),
    pytest.param({"tokens": "state"}, "tsu", id="state"),
    pytest.param({"tokens": "state"}, "tsu-lowres", id="state-lowres"),
    pytest.param({"tokens": "state", "standardise": True}, "none", id="state-standardised-noupdate"),
    pytest.param({"tokens": "state+context"}, "global", id="context-global"),
    pytest.param(
        {"tokens": "state+context"}, {"update": "global", "agent_view": "lowres"}, id="context-global-z"
    ),
    pytest.param({"tokens": "state"}, {"update": "tsu", "agent_view": "lowres"}, id="state-tsu-z"),
]


@pytest.mark.parametrize(
    ("policy_kwargs", "update", "device"), [pytest.param(*c.values, "cpu", id=c.id) for c in CASES] + CUDA
)
def test_structured_losses_and_gradients_equal_the_plain_path(env_kwargs, policy_kwargs, update, device):
    torch.manual_seed(0)
    model = _model(env_kwargs, update=update, device=device, **policy_kwargs)
    recorder = _rollout(model)
    buffer, policy = model.rollout_buffer, model.policy
    # the rollout's own values and log-probabilities equal the plain forward on the true observations
    for batch in buffer.get(batch_size=16):
        positions = np.concatenate([buffer._positions(buffer.segments[k]) for k in _group_of(buffer, batch)])
        plain_obs = _plain_observations(recorder, buffer, positions, device)
        masks = plain_obs["action_mask"].bool()
        actions = batch.actions.long().flatten()
        policy.zero_grad()
        v_plain, lp_plain, ent_plain = policy.evaluate_actions(plain_obs, actions, action_masks=masks)
        loss_plain = (v_plain.flatten() * batch.advantages).sum() + lp_plain.sum() + ent_plain.sum()
        loss_plain.backward()
        grads_plain = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
        policy.zero_grad()
        v, lp, ent = policy.evaluate_actions(batch.observations, actions)
        loss = (v.flatten() * batch.advantages).sum() + lp.sum() + ent.sum()
        loss.backward()
        grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
        torch.testing.assert_close(v, v_plain, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(lp, lp_plain, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ent, ent_plain, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch.old_log_prob, lp_plain.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch.old_values, v_plain.detach().flatten(), rtol=1e-4, atol=1e-5)
        assert len(grads) == len(grads_plain)
        for g, g_plain in zip(grads, grads_plain, strict=True):
            torch.testing.assert_close(g, g_plain, rtol=1e-3, atol=1e-4)


def _group_of(buffer, batch) -> list[int]:
    """Which segments a minibatch holds (its tables are the buffer's, in order)."""
    tables = buffer._tables
    return [next(k for k, t in enumerate(tables) if t is table) for table in batch.observations.tables]


def test_rollout_spans_episode_ends_and_keeps_every_timestep(env_kwargs):
    model = _model(env_kwargs, n_envs=2, n_steps=40)
    _rollout(model)
    buffer = model.rollout_buffer
    assert sum(s.length for s in buffer.segments) == 2 * 40
    assert len(buffer.segments) > 2  # episodes (budget 0.3 of 20-60 patches) end inside the rollout
    batches = list(buffer.get(batch_size=None))
    assert len(batches) == 1 and len(batches[0].actions) == 80


def test_episode_rows_index_follows_the_versions():
    z = torch.arange(12.0).reshape(4, 3)
    episode = EpisodeRows(z, torch.zeros(4, 2), budget_steps=3, slide=0)
    episode.step(torch.tensor([1, 2]), torch.full((2, 3), -1.0), zoomed=1)  # held from t = 1
    episode.step(torch.tensor([2]), torch.full((1, 3), -2.0), zoomed=2)  # row 2 again, from t = 2
    index = episode.index(0, 3)
    assert index.tolist() == [[0, 1, 2, 3], [0, 4, 5, 3], [0, 4, 6, 3]]
    assert episode.index(2, 1).tolist() == [[0, 4, 6, 3]]
    assert episode.flags[:, 0].tolist() == [0, 0, 0, 0, 1, 0, 1]  # visited: the zoomed rows
    assert episode.budget_left(torch.tensor([0, 3])).tolist() == [1.0, 0.0]


def test_learn_runs_and_restores_observations(env_kwargs):
    model = _model(env_kwargs, n_envs=2, n_steps=8, tokens="state")
    model.learn(32)
    assert model.num_timesteps == 32
    assert vector_env_of(model.env).observe
