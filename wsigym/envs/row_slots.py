r"""Where the zoom engine keeps each environment's rows: slots in one packed buffer.

The engine (:mod:`wsigym.envs.zoom_batch`) stores every per-row tensor of its ``B`` episodes (the
state ``S``, norms, flags, the classifier's row logits) packed along one axis of ``C`` rows:
environment ``b`` owns the slot ``[base_b, base_b + cap_b)`` and its patch ``i`` is packed row
``base_b + i`` for ``i < n_b``. So storage follows the real rows of the current slides, not the
largest of them times ``B`` (nor the dataset's largest slide).

**Placement.** A new episode reuses its environment's slot when the slide fits; otherwise it takes a
slot of ``round_up(n, step)`` rows at the top of the buffer, which keeps ``headroom`` spare rows for
that. When the top is full, or the buffer holds more than ``3 x`` the rows a fresh packing needs
(after small slides replaced large ones), every slot is packed afresh in environment order, each ``round_up(n_b, step)``
rows, with ``headroom x`` their sum spare at the top (none for a single environment, whose packings move
nothing): a :class:`Relocation` that the holders of packed tensors apply. Each packing copies the live rows once and leaves room for about ``headroom`` of them to
arrive before the next, so loading costs amortised ``O(1)`` copies per loaded row, and the buffer
holds at most ``3 x`` the rows of its current slides, each rounded up to ``step``.

Rows of a slot past its slide's ``n_b``, and slots left behind, are **dead**: ``owner`` is ``-1`` there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: Slots are multiples of this many rows.
ROW_STEP = 64
#: Spare rows left at the top of the buffer after a packing, as a fraction of the slots.
HEADROOM = 0.5
#: Pack afresh when the buffer holds more than this many times the rows a fresh packing needs.
MAX_SLACK = 3


@dataclass(frozen=True)
class Relocation:
    """A packing: the rows ``[old, old + n)`` of the old buffer move to ``[new, new + n)`` of a buffer
    of ``capacity`` rows, for each ``(old, new, n)`` in ``moves`` (environments keeping their episode)."""

    capacity: int
    moves: tuple[tuple[int, int, int], ...]

    def apply(self, t: Tensor, fill: float | bool) -> Tensor:
        """``t (C_old, ...)`` relocated: ``(capacity, ...)``, ``fill`` where no row moves to."""
        out = t.new_full((self.capacity, *t.shape[1:]), fill)
        for old, new, n in self.moves:
            out[new : new + n] = t[old : old + n]
        return out


class RowSlots:
    """The slots of ``B`` environments in packed buffers (module docstring).

    ``headroom`` defaults to :data:`HEADROOM` for several environments and to 0 for one, whose packings
    move no rows.

    Attributes:
        base, cap, n: ``(B,)`` int64 numpy: first packed row, slot rows, real rows (0: no episode).
        base_t: ``base`` as a long tensor on ``device`` (packed index ``base_t[env] + row``).
        owner: ``(C,)`` long tensor: the environment of each packed row, ``-1`` for a dead row.
        capacity: ``C``.
    """

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str,
        step: int = ROW_STEP,
        headroom: float | None = None,
    ) -> None:
        if headroom is None:  # one environment has no other rows to move: packing afresh costs nothing
            headroom = HEADROOM if num_envs > 1 else 0.0
        self.step, self.headroom = int(step), float(headroom)
        self.device = torch.device(device)
        self.base = np.zeros(num_envs, dtype=np.int64)
        self.cap = np.zeros(num_envs, dtype=np.int64)
        self.n = np.zeros(num_envs, dtype=np.int64)
        self.capacity = 0
        self.top = 0  # rows below are in slots (live or left behind)
        self.owner = torch.full((0,), -1, dtype=torch.long, device=self.device)
        self.base_t = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    def _rounded(self, n: int) -> int:
        return max(self.step, -(-int(n) // self.step) * self.step)

    def slot(self, env: int) -> slice:
        """The real rows of environment ``env`` in the packed buffers."""
        start = int(self.base[env])
        return slice(start, start + int(self.n[env]))

    def flat(self, env: Tensor, row: Tensor) -> Tensor:
        """Packed indices of the rows ``row`` of environments ``env`` (long tensors of one shape)."""
        return self.base_t[env] + row

    def place(self, envs: list[int], sizes: list[int]) -> Relocation | None:
        """Give environment ``envs[j]`` a slot for a new episode of ``sizes[j]`` rows; its old rows are
        dropped. Returns the :class:`Relocation` when everything was packed afresh, else ``None`` (the
        other environments' rows stay where they were)."""
        new_n = self.n.copy()
        new_n[envs] = sizes
        loading = np.zeros(len(self.n), dtype=bool)
        loading[envs] = True
        base, cap, top = self.base.copy(), self.cap.copy(), self.top
        fits = True
        for e in envs:
            if new_n[e] <= cap[e]:
                continue
            size = self._rounded(new_n[e])
            if top + size > self.capacity:
                fits = False
                break
            base[e], cap[e], top = top, size, top + size
        relocation = None
        packed = np.array([self._rounded(k) if k else 0 for k in new_n], dtype=np.int64)
        if not fits or self.capacity > MAX_SLACK * int(packed.sum()):
            cap = packed
            base = np.concatenate([[0], np.cumsum(cap)[:-1]]).astype(np.int64)
            top = int(cap.sum())
            capacity = top + -(-int(self.headroom * top) // self.step) * self.step
            moves = tuple(
                (int(self.base[e]), int(base[e]), int(self.n[e]))
                for e in range(len(self.n))
                if not loading[e] and self.n[e]
            )
            relocation = Relocation(capacity, moves)
            self.owner = relocation.apply(self.owner, -1)
            self.capacity = capacity
        if relocation is None:  # the old slots are dead (a packing did not carry them)
            for e in envs:
                self.owner[int(self.base[e]) : int(self.base[e] + self.cap[e])] = -1
        self.base, self.cap, self.n, self.top = base, cap, new_n, top
        for e in envs:
            self.owner[int(base[e]) : int(base[e] + cap[e])] = -1
            self.owner[int(base[e]) : int(base[e] + new_n[e])] = e
        self.base_t = torch.as_tensor(base, device=self.device)
        return relocation
