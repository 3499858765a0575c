r"""HAFED's level-2 classifier, maintained incrementally as state rows change.

HAFED classifies a state ``S (N, d)`` with ``M`` gated-attention branches over the valid rows:

.. math::
    a_{m,i} = \mathrm{GA}(s_i)_m, \quad
    \text{pooled} = \frac{1}{M}\sum_m \frac{\sum_i e^{a_{m,i}} s_i}{\sum_i e^{a_{m,i}}}, \quad
    \text{logits} = \mathrm{Head}(\text{pooled})

The logits ``a_{m,i}`` are row-wise, so after a step that changes rows ``R`` only their logits
change. Per environment and branch this class keeps a shift ``c_m`` and the sums

.. math:: D_m = \sum_i e^{a_{m,i} - c_m}, \qquad U_m = \sum_i e^{a_{m,i} - c_m} s_i \in \mathbb{R}^d

and updates them by subtracting the old rows' terms and adding the new ones: ``O(|R| x d)``
(plus one attention evaluation per changed row) instead of ``O(N x d)``.

**Stability.** Sums are float64. The shift only grows (to the largest logit seen, rescaling ``D``,
``U`` by ``e^{c - c'}``), so every term is ``<= 1``. When removals leave ``D_m < 1e-6`` (the rows
that dominated are gone and cancellation could cost precision) the environment is recomputed from
its stored row logits, with a fresh shift. The result equals ``hafed.classify(S, mask)`` to float
tolerance (tested).

**Dense changes.** When a step changes at least half of an environment's rows (the global rule changes
all of them), subtracting the old terms and adding the new costs twice a recomputation, so that
environment's sums are recomputed from its rows and stored logits instead (over its real rows only).

Rows are those of the engine's packed state (:class:`~wsigym.envs.state_update.ZoomBatchState`): the row
logits live in the same layout and follow its relocations (:meth:`IncrementalAttentionClassifier.relocate`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsigym.envs.row_slots import Relocation
from wsigym.envs.state_update import StateChange, ZoomBatchState

REFRESH_BELOW = 1e-6


class IncrementalAttentionClassifier:
    """Incremental ``hafed.classify`` for the ``B`` packed states of a
    :class:`~wsigym.envs.state_update.ZoomBatchState`.

    Args:
        hafed: a HAFED (``attention_logits``, ``slide_head``) in eval mode.
        batch_size: ``B``.
        device: where the sums live.

    Use :meth:`refresh` after loading new states (and :meth:`relocate` when their rows moved),
    :meth:`update` after each :class:`StateChange`, then :meth:`logits` ``(B, C)`` and :meth:`attention`.
    """

    def __init__(self, hafed: torch.nn.Module, batch_size: int, device: torch.device | str) -> None:
        self.hafed = hafed
        m = int(hafed.config.n_token_2)
        d = int(hafed.config.in_dim)
        self.branches = m
        #: ``(C, M)`` attention logits of every packed row (the state's layout).
        self.row_logits = torch.full((0, m), float("-inf"), device=device)
        self.shift = torch.zeros(batch_size, m, dtype=torch.float64, device=device)
        self.denom = torch.ones(batch_size, m, dtype=torch.float64, device=device)
        self.numer = torch.zeros(batch_size, m, d, dtype=torch.float64, device=device)

    def _row_logits(self, rows: Tensor) -> Tensor:
        """``rows (R, d)`` -> attention logits ``(R, M)``."""
        return self.hafed.attention_logits(rows.unsqueeze(0))[0].transpose(0, 1)

    def relocate(self, relocation: Relocation) -> None:
        """Follow the state's rows to their new places (:meth:`ZoomBatchState.load`)."""
        self.row_logits = relocation.apply(self.row_logits, float("-inf"))

    @torch.no_grad()
    def refresh(self, envs: Tensor, st: ZoomBatchState, recompute_logits: bool = True) -> None:
        """Full recomputation for environments ``envs (E,)`` from their rows of ``st``.

        ``recompute_logits=False`` reuses the stored row logits (after cancellation).
        """
        if self.row_logits.shape[0] != st.state.shape[0]:
            if self.row_logits.shape[0]:
                raise RuntimeError("the state's rows moved: call relocate() with its Relocation first")
            self.row_logits = torch.full(  # the first states of this classifier
                (st.state.shape[0], self.branches), float("-inf"), device=self.row_logits.device
            )
        for e in envs.tolist():
            rows = st.slots.slot(e)
            s = st.state[rows]
            if recompute_logits:
                self.row_logits[rows] = self._row_logits(s)
            lg = self.row_logits[rows].double()  # (n, M)
            shift = lg.amax(0) if len(s) else lg.new_zeros(self.branches)
            w = torch.exp(lg - shift)
            self.shift[e] = shift
            self.denom[e] = w.sum(0)
            self.numer[e] = w.T @ s.double()

    @torch.no_grad()
    def update(self, change: StateChange, st: ZoomBatchState) -> None:
        """Apply a :class:`StateChange` (``st`` is read for the environments whose sums are recomputed)."""
        env, new_rows, old_rows = change.env, change.new, change.old
        if env.numel() == 0:
            return
        flat = st.slots.flat(env, change.row) if change.flat is None else change.flat
        new_l = self._row_logits(new_rows)  # (R, M)
        old_l = self.row_logits[flat]
        self.row_logits[flat] = new_l
        real = st.slots.n  # (B,) rows of each environment's state
        if 2 * len(env) >= real.min():  # an environment may have changed half its rows
            counts = torch.bincount(env, minlength=self.shift.shape[0])
            dense = (counts > 0) & (2 * counts >= torch.as_tensor(real, device=counts.device))
            if dense.any():  # module docstring, Dense changes
                self.refresh(dense.nonzero().squeeze(-1), st, recompute_logits=False)
                sparse = ~dense[env]
                if not sparse.any():
                    return
                env, new_rows, old_rows = env[sparse], new_rows[sparse], old_rows[sparse]
                new_l, old_l = new_l[sparse], old_l[sparse]
        nl = new_l.double()
        single = self.shift.shape[0] == 1  # one environment: plain reductions instead of scatters
        if single:
            top = nl.amax(0, keepdim=True)
        else:
            top = torch.full_like(self.shift, float("-inf"))
            top.scatter_reduce_(0, env.unsqueeze(-1).expand_as(nl), nl, reduce="amax")
        shift = torch.maximum(self.shift, top)
        factor = torch.exp(self.shift - shift)
        self.denom.mul_(factor)
        self.numer.mul_(factor.unsqueeze(-1))
        self.shift = shift
        # the new rows' terms minus the old rows': weights (2R, M) on rows (2R, d)
        w = torch.exp(torch.cat([nl, old_l.double()]) - shift[torch.cat([env, env])])
        w[len(env) :] *= -1.0
        rows = torch.cat([new_rows, old_rows]).double()
        if single:
            self.denom.add_(w.sum(0, keepdim=True))
            self.numer[0].addmm_(w.T, rows)
        else:  # one (M, 2R_e) @ (2R_e, d) product per environment, no (2R, M, d) temporary
            both = torch.cat([env, env])
            self.denom.index_add_(0, both, w)
            order = torch.argsort(both, stable=True)
            envs, sizes = torch.unique_consecutive(both[order], return_counts=True)
            split = sizes.tolist()
            for e, w_e, rows_e in zip(
                envs.tolist(), w[order].split(split), rows[order].split(split), strict=True
            ):
                self.numer[e].addmm_(w_e.T, rows_e)
        low = self.denom < REFRESH_BELOW
        if bool(low.any()):
            self.refresh(low.any(-1).nonzero().squeeze(-1), st, recompute_logits=False)

    @torch.no_grad()
    def pooled(self) -> Tensor:
        """Branch-averaged attention pooling ``(B, d)`` float32."""
        return (self.numer / self.denom.unsqueeze(-1)).mean(1).float()

    @torch.no_grad()
    def logits(self) -> Tensor:
        """Slide logits ``(B, C)`` = ``hafed.slide_head(pooled)``."""
        return self.hafed.slide_head(self.pooled())

    @torch.no_grad()
    def attention(self, st: ZoomBatchState, width: int) -> Tensor:
        """Branch-averaged attention weights ``(B, width)`` (0 past each slide's rows), as
        ``classify()["attention"]``; ``width`` at least the largest slide's ``N``."""
        out = torch.zeros(self.shift.shape[0], width, device=self.row_logits.device)
        for e in range(self.shift.shape[0]):
            rows = st.slots.slot(e)
            w = torch.exp(self.row_logits[rows].double() - self.shift[e]) / self.denom[e]
            out[e, : len(w)] = w.mean(-1).float()
        return out
