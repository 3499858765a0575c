r"""A rollout buffer that stores zoom episodes as their slide plus the rows that changed.

SB3's rollout buffers keep every observation: ``n_steps x n_envs`` padded states of ``P x d`` floats
(0.83 GB for 128 observations on synth-c16), and the update evaluates the policy on all ``N`` rows
of every stored state. Here an episode is an :class:`EpisodeRows`: a reference to its slide's low-res
rows ``Z`` and the *versions* it wrote (row, first timestep, value, flags), about ``N + 5T`` rows for
``T`` steps. A rollout of one environment is a :class:`Segment` of its episodes, and a minibatch is a
set of whole segments, each handed to the policy as a :class:`~wsigym.agents.row_table.RowTable`
(:class:`~wsigym.agents.row_table.SegmentBatch`), so the policy's per-row work is done once per
version and the memory grows with the real rows (no padding to the dataset's largest slide).

Minibatches group whole segments (shuffled), not shuffled single timesteps as SB3's buffers do:
that is what lets a version be scored once for all the timesteps that hold it. With
``batch_size=None`` the whole rollout is one batch (SASHA's full-batch update).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableRolloutBufferSamples
from stable_baselines3.common.buffers import RolloutBuffer
from torch import Tensor

from wsigym.agents.held_sums import held_intervals, held_tree
from wsigym.agents.row_table import FLAG_CHANNELS, RowTable, SegmentBatch, table_statistics


class EpisodeRows:
    """One episode's rows as versions: ``Z (N, d)`` then every row the episode wrote, in time order.

    Args:
        z: ``(N, d)`` the slide's low-res rows (the initial state).
        coords: ``(N, 2)`` normalised patch corners (the observation's ``coords``).
        budget_steps: ``T``, the episode's zoom budget.
        slide: position of the slide in the source (bookkeeping).
        statistics: keep float64 sums of the current rows and of their squared norms (``total (d,)``,
            ``square ()``), updated on the changed rows: a standardising policy's statistics without
            reading every row each step.

    ``states``/``flags`` are ``(N + E, d)`` / ``(N + E, 4)`` views; ``start[v]`` is the first timestep
    at which version ``N + v`` is held; ``current`` ``(N,)`` the version each row holds now.
    """

    def __init__(
        self, z: Tensor, coords: Tensor, budget_steps: int, slide: int, statistics: bool = False
    ) -> None:
        n, d = z.shape
        self.n, self.budget_steps, self.slide = n, int(budget_steps), int(slide)
        capacity = n + max(16, 8 * int(budget_steps))
        self._states = z.new_empty(capacity, d)
        self._states[:n] = z
        self._flags = z.new_zeros(capacity, FLAG_CHANNELS)
        self._flags[:n, 2:] = coords
        self.coords = coords
        self._rows = torch.empty(capacity - n, dtype=torch.long, device=z.device)
        self._start = torch.empty(capacity - n, dtype=torch.long, device=z.device)
        self.count = 0  # E
        self.steps = 0  # zooms so far: the timestep of the current state
        self.current = torch.arange(n, device=z.device)
        self._terms: Tensor | None = None  # a rollout's cached version_terms, rows N + E
        self.total: Tensor | None = z.double().sum(0) if statistics else None
        self.square: Tensor | None = z.double().square().sum() if statistics else None

    @property
    def terms(self) -> Tensor | None:
        """The cached per-version terms of a rollout's policy (``set_terms``/``add_terms``)."""
        return None if self._terms is None else self._terms[: self.size]

    def set_terms(self, terms: Tensor) -> None:
        """Cache the policy's terms of every version ``(V, w)`` (room is kept for later versions)."""
        self._terms = terms.new_empty(self._states.shape[0], terms.shape[1])
        self._terms[: self.size] = terms

    def add_terms(self, first: int, terms: Tensor) -> None:
        """Cache the terms of versions ``first ..`` (after :meth:`step`)."""
        assert self._terms is not None, "set_terms() first"
        self._terms[first : first + terms.shape[0]] = terms

    @property
    def size(self) -> int:
        """``V = N + E``."""
        return self.n + self.count

    @property
    def states(self) -> Tensor:
        return self._states[: self.size]

    @property
    def flags(self) -> Tensor:
        return self._flags[: self.size]

    def budget_left(self, step: Tensor | int) -> Tensor:
        """The observation's remaining budget fraction at timestep(s) ``step``, float32."""
        t = torch.as_tensor(step, device=self._states.device)
        return ((self.budget_steps - t) / self.budget_steps).clamp(0.0, 1.0).float()

    def _grow(self, extra: int) -> None:
        need = self.size + extra
        if need <= self._states.shape[0]:
            return
        capacity = max(need, 2 * self._states.shape[0])
        for name in ("_states", "_flags", "_terms"):
            old = getattr(self, name)
            if old is not None:
                new = old.new_zeros(capacity, old.shape[1])
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        for name in ("_rows", "_start"):
            old = getattr(self, name)
            new = old.new_empty(capacity - self.n)
            new[: self.count] = old[: self.count]
            setattr(self, name, new)

    def step(self, rows: Tensor, values: Tensor, zoomed: int) -> Tensor:
        """Record one zoom: rows ``rows (R,)`` now hold ``values (R, d)`` (all updated; the row
        ``zoomed`` is also visited). Returns the new versions' indices ``(R,)``."""
        self.steps += 1
        r = rows.shape[0]
        self._grow(r)
        first = self.size
        new = torch.arange(first, first + r, device=rows.device)
        self._states[first : first + r] = values
        self._flags[first : first + r, 0] = (rows == zoomed).float()
        self._flags[first : first + r, 1] = 1.0
        self._flags[first : first + r, 2:] = self.coords[rows]
        if self.total is not None and self.square is not None:
            fresh, old = values.double(), self._states[self.current[rows]].double()
            self.total += fresh.sum(0) - old.sum(0)
            self.square += fresh.square().sum() - old.square().sum()
        self._rows[self.count : self.count + r] = rows
        self._start[self.count : self.count + r] = self.steps
        self.count += r
        self.current[rows] = new
        return new

    def index(self, first: int, length: int) -> Tensor:
        """``(length, N)`` long: the version each row holds at timesteps ``first .. first+length-1``."""
        start, rows = self._start[: self.count], self._rows[: self.count]
        versions = torch.arange(self.n, self.size, device=rows.device)
        held = self.current.new_full((length, self.n), -1)
        before = start <= first  # versions already held at the first timestep
        held[0] = torch.arange(self.n, device=rows.device)
        held[0].scatter_reduce_(0, rows[before], versions[before], reduce="amax")
        inside = ~before & (start < first + length)
        held.view(-1).scatter_reduce_(
            0, (start[inside] - first) * self.n + rows[inside], versions[inside], reduce="amax"
        )
        return held[:length].cummax(dim=0).values  # versions grow with time: the latest one wins


@dataclass
class Segment:
    """The consecutive timesteps ``first .. first+length-1`` of one episode, stored in column ``env``
    of the buffer from row ``pos`` on."""

    episode: EpisodeRows
    env: int
    pos: int
    first: int
    length: int = 0


class SegmentRolloutBuffer(RolloutBuffer):
    """SB3 ``RolloutBuffer`` (rewards, values, GAE) whose observations are :class:`Segment` s.

    Filled by :class:`~wsigym.agents.segment_ppo.SegmentMaskablePPO`: :meth:`open` a segment per
    environment, :meth:`add` each step, :meth:`close` when an episode ends (or the rollout does).
    :meth:`get` yields ``MaskableRolloutBufferSamples`` whose ``observations`` is a
    :class:`~wsigym.agents.row_table.SegmentBatch` and ``action_masks`` is ``None`` (the tables carry
    the masks). ``standardise`` precomputes the per-timestep statistics the policy needs;
    ``mask_updated`` follows the environment's option.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        standardise: bool = False,
        mask_updated: bool = False,
    ) -> None:
        self.standardise, self.mask_updated = standardise, mask_updated
        #: Build each table's held tree (:mod:`~wsigym.agents.held_sums`): for a policy with per-version scores.
        self.held_trees = True
        self.segments: list[Segment] = []
        self._open: dict[int, Segment] = {}
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    def reset(self) -> None:
        shape = (self.buffer_size, self.n_envs)
        self.actions = np.zeros((*shape, self.action_dim), dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.returns = np.zeros(shape, dtype=np.float32)
        self.episode_starts = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.log_probs = np.zeros(shape, dtype=np.float32)
        self.advantages = np.zeros(shape, dtype=np.float32)
        self.segments, self._open = [], {}
        self._tables: list[RowTable] | None = None
        self.generator_ready = False
        self.pos, self.full = 0, False

    def open(self, env: int, episode: EpisodeRows) -> None:
        """Start a segment of ``episode`` in column ``env`` at the current row."""
        self._open[env] = Segment(episode, env, self.pos, episode.steps)

    def close(self, env: int) -> None:
        """End the open segment of column ``env`` (kept if it holds a timestep)."""
        segment = self._open.pop(env, None)
        if segment is not None and segment.length:
            self.segments.append(segment)

    def add(  # type: ignore[override]
        self,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: Tensor,
        log_prob: Tensor,
    ) -> None:
        """One step of every environment; the observations are the open segments' current states."""
        self.actions[self.pos] = np.asarray(action).reshape(self.n_envs, self.action_dim)
        self.rewards[self.pos] = np.asarray(reward)
        self.episode_starts[self.pos] = np.asarray(episode_start)
        self.values[self.pos] = value.clone().cpu().numpy().flatten()
        self.log_probs[self.pos] = log_prob.clone().cpu().numpy()
        for segment in self._open.values():
            segment.length += 1
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True

    def _table(self, segment: Segment) -> RowTable:
        ep = segment.episode
        index = ep.index(segment.first, segment.length)
        size = int(index.max()) + 1  # versions written after the segment are not needed
        states, flags = ep.states[:size], ep.flags[:size]
        budget = ep.budget_left(torch.arange(segment.first, segment.first + segment.length))
        mean = scale = None
        if self.standardise:
            mean, scale = table_statistics(states, index)
        held = held_tree(*held_intervals(index, size), segment.length) if self.held_trees else None
        return RowTable(states, flags, index, budget, mean, scale, held)

    def stored_bytes(self) -> int:
        """Bytes of the rows the rollout's segments keep (each episode's versions and flags, once)."""
        episodes = {id(s.episode): s.episode for s in self.segments}
        return sum(e.states.nbytes + e.flags.nbytes for e in episodes.values())

    def _positions(self, segment: Segment) -> np.ndarray:
        """Flat positions (SB3's ``swap_and_flatten`` order: ``env * buffer_size + step``)."""
        return segment.env * self.buffer_size + np.arange(segment.pos, segment.pos + segment.length)

    def get(  # type: ignore[override]
        self, batch_size: int | None = None
    ) -> Generator[MaskableRolloutBufferSamples, None, None]:
        """Minibatches of whole segments in random order, each of at least ``batch_size`` timesteps
        (the last one may be smaller); ``None``: the whole rollout at once."""
        assert self.full, "the rollout is not complete"
        if not self.generator_ready:
            for name in ("actions", "values", "log_probs", "advantages", "returns"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self._tables = [self._table(s) for s in self.segments]
            self.generator_ready = True
        limit = self.buffer_size * self.n_envs if batch_size is None else batch_size
        order = np.random.permutation(len(self.segments))
        group: list[int] = []
        count = 0
        for i, k in enumerate(order):
            group.append(int(k))
            count += self.segments[k].length
            if count >= limit or i == len(order) - 1:
                yield self._samples(group)
                group, count = [], 0

    def _samples(self, group: list[int]) -> MaskableRolloutBufferSamples:
        assert self._tables is not None
        idx = np.concatenate([self._positions(self.segments[k]) for k in group])
        return MaskableRolloutBufferSamples(
            observations=SegmentBatch([self._tables[k] for k in group], self.mask_updated),  # type: ignore[arg-type]
            actions=self.to_torch(self.actions[idx]),
            old_values=self.to_torch(self.values[idx].flatten()),
            old_log_prob=self.to_torch(self.log_probs[idx].flatten()),
            advantages=self.to_torch(self.advantages[idx].flatten()),
            returns=self.to_torch(self.returns[idx].flatten()),
            action_masks=None,  # type: ignore[arg-type]
        )
