r"""``SegmentMaskablePPO``: sb3-contrib's ``MaskablePPO`` on zoom episodes stored as changed rows.

The same algorithm, loss and hyperparameters as ``MaskablePPO`` with
:class:`~wsigym.agents.policy.PatchPolicy`; only where states live changes:

- **Rollout.** The learner reads the vector env's engine directly (``WSIZoomVectorEnv.batch``, whose
  ``seen_change`` lists the rows each step changed as the agent sees them) and never asks for the padded observation
  (``observe=False``). Each environment's episode is an :class:`~wsigym.agents.segments.EpisodeRows`;
  the policy's per-version terms (:func:`~wsigym.agents.row_table.version_terms`) are computed once
  per version and kept until the next update, and the current rows' terms sit side by side in a
  board (:class:`EpisodeRunner`) written on the changed rows. So a step costs the changed rows'
  ``d``-wide products plus, for a policy with a budget channel or standardisation (whose statistics
  are running sums), ``O(N x h)`` gates.
- **Storage.** :class:`~wsigym.agents.segments.SegmentRolloutBuffer`: slide references plus the rows
  that changed, no padded observation.
- **Update.** ``MaskablePPO.train`` unchanged; its minibatches are whole segments and the policy
  evaluates them as row tables (:meth:`PatchPolicy.evaluate_actions` on a
  :class:`~wsigym.agents.row_table.SegmentBatch`); with per-version scores its softmax sums run over
  each version's interval of timesteps (:mod:`wsigym.agents.held_sums`), not over ``L x N`` rows.
  The loss equals the plain path's on the same timesteps to float rounding
  (``tests/agents/test_segments.py``).

Rewards go through the same VecEnv wrappers as the plain path (``VecMonitor``, ``VecNormalize``).
Everything stays on the engine's device (CPU or CUDA); only the ``B`` chosen actions cross to the
host, as the VecEnv API needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from wsigym.agents.policy import PAD_LOGIT, PatchPolicy
from wsigym.agents.row_table import standardisation
from wsigym.agents.segments import EpisodeRows, SegmentRolloutBuffer
from wsigym.envs.vector import WSIZoomVectorEnv
from wsigym.envs.zoom_batch import ZoomBatch


def vector_env_of(env: Any) -> WSIZoomVectorEnv:
    """The :class:`WSIZoomVectorEnv` under a stack of SB3 VecEnv wrappers (``.venv`` links).

    Raises:
        TypeError: when there is none.
    """
    inner = env
    while not isinstance(inner, WSIZoomVectorEnv):
        if not hasattr(inner, "venv"):
            raise TypeError(
                f"the structured PPO path needs a WSIZoomVectorEnv under the VecEnv, got {type(env).__name__}"
            )
        inner = inner.venv
    return inner


class EpisodeRunner:
    """The ``B`` running episodes of a vector env as :class:`EpisodeRows`, and the policy on them.

    The current rows of every episode are also kept side by side in a board: their versions' cached
    terms ``(B, W, g + c)`` and flags ``(B, W, 4)`` (``W`` the largest current slide), written on the
    changed rows only, so acting is a few batched operations over ``(B, W)``
    (:func:`~wsigym.agents.row_table.current_outputs`); a standardising policy's statistics come from
    each episode's running sums.
    """

    def __init__(self, engine: ZoomBatch, policy: PatchPolicy) -> None:
        self.engine, self.policy = engine, policy
        self.flag = 1 if engine.config.mask_updated else 0  # the flag that makes a row illegal
        with torch.no_grad():
            self.weights = policy.mlp_extractor.gate_weights(engine.dim)
        self.episodes: list[EpisodeRows] = [self._episode(e) for e in range(engine.num_envs)]
        self._allocate(max(e.n for e in self.episodes))
        self._board(range(engine.num_envs))

    def _episode(self, env: int) -> EpisodeRows:
        engine = self.engine
        k = int(engine.slide[env])
        z, coords, _ = engine.source.episode_arrays(k)
        coords_t = torch.as_tensor(coords, dtype=z.dtype, device=z.device)
        episode = EpisodeRows(
            z, coords_t, int(engine.steps_budget[env]), k, statistics=self.policy.standardise
        )
        episode.set_terms(self._terms(episode.states, episode.flags))
        return episode

    def _allocate(self, width: int) -> None:
        terms, b = self.episodes[0].terms, len(self.episodes)
        assert terms is not None
        self.terms = terms.new_zeros(b, width, terms.shape[1])  # (B, W, g + c)
        self.flags = terms.new_zeros(b, width, self.episodes[0].flags.shape[1])  # (B, W, 4)
        self.legal = torch.zeros(b, width, dtype=torch.bool, device=terms.device)
        self.valid = torch.zeros(b, width, dtype=torch.bool, device=terms.device)

    def _board(self, envs: Any) -> None:
        """Write the current rows of ``envs`` into the board (all of it when a slide outgrows it)."""
        episodes = self.episodes
        width = max(e.n for e in episodes)
        if self.terms.shape[1] < width:
            self._allocate(width)
            envs = range(len(episodes))
        for e in envs:
            episode = episodes[e]
            n, terms = episode.n, episode.terms
            assert terms is not None
            flags = episode.flags[episode.current]
            self.terms[e, :n], self.terms[e, n:] = terms[episode.current], 0.0
            self.flags[e, :n], self.flags[e, n:] = flags, 0.0
            self.legal[e, :n], self.legal[e, n:] = flags[:, self.flag] < 0.5, False
            self.valid[e, :n], self.valid[e, n:] = True, False

    @torch.no_grad()
    def _terms(self, states: Tensor, flags: Tensor) -> Tensor:
        device = self.policy.device
        return self.policy.mlp_extractor.version_terms(
            self.weights, states.to(device), flags.to(device), self.policy.per_step
        )

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute every episode's cached terms (after the policy's weights changed)."""
        self.weights = self.policy.mlp_extractor.gate_weights(self.engine.dim)
        for episode in self.episodes:
            episode.set_terms(self._terms(episode.states, episode.flags))
        self._board(range(len(self.episodes)))

    @torch.no_grad()
    def new_episode(self, env: int) -> EpisodeRows:
        """Follow the engine's new episode in ``env`` (after a reset)."""
        self.episodes[env] = self._episode(env)
        self._board([env])
        return self.episodes[env]

    @torch.no_grad()
    def record(self, actions: np.ndarray) -> None:
        """Append the rows the engine's last step wrote to each episode (and their cached terms)."""
        change = self.engine.seen_change  # None: no episode zoomed (e.g. every action a no-op)
        if change is None:
            for e, episode in enumerate(self.episodes):
                episode.step(episode.current[:0], episode.states[:0], int(actions[e]))
            return
        order = torch.argsort(change.env, stable=True)  # rows grouped by environment
        env, row, new = change.env[order], change.row[order], change.new[order]
        counts = torch.bincount(env, minlength=len(self.episodes)).tolist()
        firsts = [episode.size for episode in self.episodes]
        for e, (episode, rows, values) in enumerate(
            zip(self.episodes, row.split(counts), new.split(counts), strict=True)
        ):
            episode.step(rows, values, int(actions[e]))
        flags = torch.cat([ep.flags[first:] for ep, first in zip(self.episodes, firsts, strict=True)])
        terms = self._terms(new, flags)  # one product for all envs
        for episode, first, part in zip(self.episodes, firsts, terms.split(counts), strict=True):
            episode.add_terms(first, part)
        self.terms[env, row] = terms
        self.flags[env, row] = flags
        self.legal[env, row] = flags[:, self.flag] < 0.5

    @torch.no_grad()
    def outputs(self, envs: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """For the current states of ``envs``: logits ``(b, W)`` (illegal and padding rows
        :data:`PAD_LOGIT`), legal-action masks ``(b, W)`` and values ``(b, 1)``."""
        policy, extractor = self.policy, self.policy.mlp_extractor
        board = (self.terms, self.flags, self.legal, self.valid)
        if envs != list(range(len(self.episodes))):
            board = tuple(x[envs] for x in board)
        terms, flags, legal, valid = board
        episodes = [self.episodes[e] for e in envs]
        budget = torch.stack([e.budget_left(e.steps) for e in episodes]).to(terms.device)
        mean = scale = None
        if policy.standardise:
            total = torch.stack([e.total for e in episodes])  # type: ignore[misc]
            square = torch.stack([e.square for e in episodes])  # type: ignore[misc]
            counts = torch.tensor([e.n for e in episodes])
            mean, scale = (x.to(terms.device) for x in standardisation(total, square, counts, terms.dtype))
        if not policy.per_step:  # per-version scores: a few operations over the whole board
            logits, latents = extractor.current_outputs(
                self.weights, terms, flags, valid, budget, mean, scale, per_step=False
            )
        else:  # gates per row and timestep cost O(rows x K): each episode on its own rows, not the padding
            logits = terms.new_zeros(valid.shape)
            parts = []
            for i, episode in enumerate(episodes):
                one = slice(i, i + 1)
                n = episode.n
                logits[one, :n], latent = extractor.current_outputs(
                    self.weights,
                    terms[one, :n],
                    flags[one, :n],
                    valid[one, :n],
                    budget[one],
                    None if mean is None else mean[one],
                    None if scale is None else scale[one],
                    per_step=True,
                )
                parts.append(latent)
            latents = torch.cat(parts)
        return logits.masked_fill(~legal, PAD_LOGIT), legal, policy.value_net(latents)

    @torch.no_grad()
    def act(self, deterministic: bool = False) -> tuple[np.ndarray, Tensor, Tensor]:
        """Actions ``(B,)`` (numpy), values ``(B, 1)`` and log-probabilities ``(B,)`` of every env."""
        logits, _, values = self.outputs(list(range(len(self.episodes))))
        # sb3-contrib's masked categorical (masked logits -> -1e8), sampled without its wrappers
        log_p = torch.log_softmax(logits, dim=-1)
        actions = log_p.argmax(-1) if deterministic else sample_categorical(log_p.exp())
        return actions.cpu().numpy(), values, log_p.gather(1, actions[:, None]).squeeze(-1)


def sample_categorical(probs: Tensor) -> Tensor:
    """One draw ``(B,)`` from each row of ``probs (B, W)`` by inverting its cumulative sum: one uniform
    number per row (``torch.multinomial`` draws ``W`` exponentials per row). Entries of probability 0
    (illegal, padding) are never drawn; uses torch's global generator (seeded by SB3)."""
    cumulative = probs.cumsum(dim=-1)
    total = cumulative[:, -1:]
    u = torch.rand_like(total) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total, also after rounding
    return torch.searchsorted(cumulative, u, right=True).squeeze(-1)


class SegmentMaskablePPO(MaskablePPO):
    """``MaskablePPO`` with episodes stored as changed rows (module docstring).

    Takes ``MaskablePPO``'s arguments; the policy must be a :class:`PatchPolicy` and the env a
    :class:`WSIZoomVectorEnv` under SB3 VecEnv wrappers (``make_sb3_vec_env``), whose observations it
    switches off while learning. ``batch_size=None`` updates on the whole rollout at once.
    """

    def __init__(self, policy: Any, env: VecEnv, **kwargs: Any) -> None:
        engine = vector_env_of(env).batch
        standardise = bool(kwargs.get("policy_kwargs", {}).get("standardise", False))
        kwargs["rollout_buffer_class"] = SegmentRolloutBuffer
        kwargs["rollout_buffer_kwargs"] = {
            "standardise": standardise,
            "mask_updated": engine.config.mask_updated,
        }
        self._runner: EpisodeRunner | None = None
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self.rollout_buffer.held_trees = not self.policy.per_step  # type: ignore[attr-defined]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_runner"]

    def learn(self, *args: Any, **kwargs: Any) -> SegmentMaskablePPO:
        vector = vector_env_of(self.env)
        vector.observe = False
        try:
            return super().learn(*args, **kwargs)
        finally:
            vector.observe = True
            self._runner = None

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        self._last_obs = None  # the env is reset (no observation is built) and followed from the engine
        out = super()._setup_learn(*args, **kwargs)
        self._runner = EpisodeRunner(vector_env_of(self.env).batch, self.policy)  # type: ignore[arg-type]
        return out

    def collect_rollouts(  # type: ignore[override]
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: SegmentRolloutBuffer,
        n_rollout_steps: int,
        use_masking: bool = True,
    ) -> bool:
        """Fill the buffer with ``n_rollout_steps`` steps of every environment (SB3's loop, on rows)."""
        runner = self._runner
        assert runner is not None, "collect_rollouts() outside learn()"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        runner.refresh()
        for e, episode in enumerate(runner.episodes):
            rollout_buffer.open(e, episode)
        callback.on_rollout_start()
        n_steps = 0
        dones = np.zeros(env.num_envs, dtype=bool)
        while n_steps < n_rollout_steps:
            actions, values, log_probs = runner.act()
            _, rewards, dones, infos = env.step(actions)
            runner.record(actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            truncated = [e for e in np.flatnonzero(dones) if infos[e].get("TimeLimit.truncated", False)]
            if truncated:  # bootstrap the cut episode with the value of its last state
                rewards = rewards + 0.0
                rewards[truncated] += self.gamma * runner.outputs(truncated)[2][:, 0].cpu().numpy()
            rollout_buffer.add(actions.reshape(-1, 1), rewards, self._last_episode_starts, values, log_probs)
            self._last_episode_starts = dones
            for e in np.flatnonzero(dones):
                rollout_buffer.close(int(e))
                rollout_buffer.open(int(e), runner.new_episode(int(e)))
        values = runner.outputs(list(range(env.num_envs)))[2]
        for e in range(env.num_envs):
            rollout_buffer.close(e)
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.on_rollout_end()
        return True
