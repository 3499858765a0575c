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
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsigym.envs.state_update import StateChange

REFRESH_BELOW = 1e-6


class IncrementalAttentionClassifier:
    """Incremental ``hafed.classify`` for ``B`` padded states ``(B, R, d)``.

    Args:
        hafed: a HAFED (``attention_logits``, ``slide_head``) in eval mode.
        batch_size: ``B``.
        max_patches: ``R``, the rows per state (the engine resizes :attr:`row_logits` with its rows).
        device: where the sums live.

    Use :meth:`refresh` after loading new states, :meth:`update` after each :class:`StateChange`,
    then :meth:`logits` ``(B, C)`` and :meth:`attention` ``(B, R)``.
    """

    def __init__(
        self, hafed: torch.nn.Module, batch_size: int, max_patches: int, device: torch.device | str
    ) -> None:
        self.hafed = hafed
        m = int(hafed.config.n_token_2)
        d = int(hafed.config.in_dim)
        self.branches = m
        self.row_logits = torch.full((batch_size, max_patches, m), float("-inf"), device=device)
        self.shift = torch.zeros(batch_size, m, dtype=torch.float64, device=device)
        self.denom = torch.ones(batch_size, m, dtype=torch.float64, device=device)
        self.numer = torch.zeros(batch_size, m, d, dtype=torch.float64, device=device)
        #: ``(B,)`` real rows of each environment's state (set by :meth:`refresh`).
        self.real = torch.zeros(batch_size, dtype=torch.long, device=device)

    def _row_logits(self, rows: Tensor) -> Tensor:
        """``rows (R, d)`` -> attention logits ``(R, M)``."""
        return self.hafed.attention_logits(rows.unsqueeze(0))[0].transpose(0, 1)

    @torch.no_grad()
    def refresh(self, envs: Tensor, state: Tensor, valid: Tensor, recompute_logits: bool = True) -> None:
        """Full recomputation for environments ``envs (E,)`` from ``state (B, R, d)`` and ``valid (B, R)``.

        ``recompute_logits=False`` reuses the stored row logits (after cancellation).
        """
        if envs.numel() == 0:
            return
        self.real[envs] = valid[envs].sum(-1)
        rows = valid[envs].any(0).nonzero()
        last = int(rows.max()) + 1 if rows.numel() else 1  # rows past the last real one are padding
        s = state[envs, :last]  # (E, last, d)
        mask = valid[envs, :last]
        if recompute_logits:
            logits = self.hafed.attention_logits(s).transpose(1, 2)  # (E, last, M)
            logits = logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            self.row_logits[envs] = float("-inf")
            self.row_logits[envs, :last] = logits
        else:
            logits = self.row_logits[envs, :last]
        lg = logits.double()
        shift = lg.amax(dim=1)  # (E, M)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        w = torch.exp(lg - shift.unsqueeze(1))  # (E, P, M), 0 on padding
        self.shift[envs] = shift
        self.denom[envs] = w.sum(1)
        self.numer[envs] = torch.einsum("epm,epd->emd", w, s.double())

    @torch.no_grad()
    def update(self, change: StateChange, state: Tensor, valid: Tensor) -> None:
        """Apply a :class:`StateChange` (``state`` is read for the environments whose sums are recomputed)."""
        env, new_rows, old_rows = change.env, change.new, change.old
        if env.numel() == 0:
            return
        new_l = self._row_logits(new_rows)  # (R, M)
        old_l = self.row_logits[env, change.row]
        self.row_logits[env, change.row] = new_l
        counts = torch.bincount(env, minlength=self.shift.shape[0])
        dense = (counts > 0) & (2 * counts >= self.real)
        if dense.any():  # module docstring, Dense changes
            self.refresh(dense.nonzero().squeeze(-1), state, valid, recompute_logits=False)
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
            self.refresh(low.any(-1).nonzero().squeeze(-1), state, valid, recompute_logits=False)

    @torch.no_grad()
    def pooled(self) -> Tensor:
        """Branch-averaged attention pooling ``(B, d)`` float32."""
        return (self.numer / self.denom.unsqueeze(-1)).mean(1).float()

    @torch.no_grad()
    def logits(self) -> Tensor:
        """Slide logits ``(B, C)`` = ``hafed.slide_head(pooled)``."""
        return self.hafed.slide_head(self.pooled())

    @torch.no_grad()
    def attention(self) -> Tensor:
        """Branch-averaged attention weights ``(B, R)`` (0 on padding), as ``classify()["attention"]``."""
        w = torch.exp(self.row_logits.double() - self.shift.unsqueeze(1)) / self.denom.unsqueeze(1)
        return w.mean(-1).float()
