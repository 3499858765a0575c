r"""State-update rules after a zoom, batched over ``B`` environments in torch.

Every rule acts on padded batches (``P`` = max patches, rows ``>= N`` are padding) and, for each
active environment ``b`` with zoomed patch ``a = anchors[b]``, writes the oracle row
``S(a) <- V(a)``. A rule is a small frozen object (its options live in it, so the environments take
one ``update`` name); :data:`UPDATE_RULES` names them. They differ in which other rows change:

``"tsu"`` (SASHA's targeted state update, the default of ``WSIZoom-v0``; :class:`TSURule`)
    .. math::
        C = \{ i \text{ valid} : \cos(S_t(i), S_t(a)) \ge \tau \}, \quad
        C_{new} = C \setminus (\{a\} \cup \text{updated}), \quad
        S(i) \leftarrow f_S([V(a), S_t(a), S_t(i)]) \;\; \forall i \in C_{new}, \quad
        \text{updated} \leftarrow \text{updated} \cup C \cup \{a\}

    with ``|cos|`` when ``absolute_cosine=True`` (SASHA's code; the environment takes the TSU
    config's ``similarity``). This is the step of SASHA's ``envs/WSI_cosine_env.py``
    (``WSICosineObservationEnv.step``): similarity and the ``f_S`` anchor input come from the
    **current state row** ``S_t(a)``; ``f_S`` inputs in the code's order ``[V(a), S_t(a), S_t(i)]``;
    each row is TSU-updated at most once (SASHA's ``mask``); every zoomed row holds ``V``. A row the
    rule can still update was never written, so ``S_t(i) = Z(i)`` there; ``S_t(a)`` differs from
    ``Z(a)`` exactly when ``a`` was TSU-updated by an earlier zoom (allowed with the default
    ``mask_updated=False``, as in SASHA, whose policy masks zoomed patches only).
    ``tests/envs/test_state_update.py`` checks this rule against a plain transcription of that step.

    Not reproduced from SASHA's step (on purpose): once every patch of the slide has been zoomed or
    TSU-updated, SASHA's environment stops changing the state (later zooms do not even write
    ``V(a)``); here a zoom always writes ``V(a)``. Cosines use ``max(||x||, 1e-12)`` norms (torch's
    ``cosine_similarity`` clamps at ``1e-8``): equal for any non-zero row.

``"tsu-lowres"`` (this project's variant, ``TSURule(anchor="lowres")``; ``WSIZoom-v0`` before v0.2)
    the same with the anchor's **low-res** row: ``cos(Z_i, Z_a)`` and ``f_S([V(a), Z(a), Z(i)])``.
    These are exactly the inputs :mod:`zoo.train_tsu` (and SASHA's ``step5_tsu_training.py``) trains
    ``f_S`` on, so training and use see one input distribution (SASHA pitfall 7, "TSU input
    shift"); it differs from ``"tsu"`` only on zooms of previously TSU-updated patches.

``"global"`` (this project's reconstruction of RLogist's global update with the same ``f_S``,
``WSIZoomGlobal-v0``; :class:`GlobalRule`)
    every valid, not-yet-zoomed row ``i != a`` is set to ``f_S([V(a), Z(a), Z(i)])`` after every
    zoom (so it reflects the latest zoom only); all of them count as updated. SASHA's ablation
    environment (``envs/WSI_env.py``, ``WSIObservationEnv``) computes the same classifier input up to
    the ``f_S`` input order, but is **not reproduced** by default, because three of its behaviours
    look like slips of that file rather than the ablation it stands for: it resets ``current_state``
    to ``Z`` at the end of every step and returns that, so its agent never observes a zoom (only its
    own picks; available as the environment option ``agent_view="lowres"``, which SASHA's
    reproduction uses for this ablation, :mod:`wsigym.agents.reproduction`); it feeds
    ``f_S`` ``[S(a), V(a), S(i)]``, an order the TSU checkpoint was not trained on (it is trained on
    ``[V(a), Z(a), Z(i)]``); and it takes the cross-entropy of softmax outputs (a double softmax, with
    difference rewards and a terminal ``-CE``). Here the agent observes the state the classifier
    reads (unless ``agent_view="lowres"``), ``f_S`` gets its trained order, and the reward is the
    environment's ``reward`` option.

``"none"`` (``WSIZoomNoUpdate-v0``; :class:`NoUpdateRule`)
    only the zoomed row changes.

Each rule returns a :class:`StateChange` listing the rows it wrote with their old and new values,
which is what :class:`wsigym.envs.classifier.IncrementalAttentionClassifier` and the structured PPO
runner (:mod:`wsigym.agents.segments`) need: they never assume which rows a rule reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

EPS = 1e-12  # as torch.nn.functional.normalize


@dataclass
class StateChange:
    """Rows written by one update: ``state[env, row]`` went from ``old`` to ``new``.

    Shapes: ``env (R,)``, ``row (R,)`` long; ``old (R, d)``, ``new (R, d)``. ``(env, row)`` pairs are
    distinct. ``tsu_count (B,)`` counts the rows updated by ``f_S`` per environment (zoomed row excluded).
    """

    env: Tensor
    row: Tensor
    old: Tensor
    new: Tensor
    tsu_count: Tensor


@dataclass
class ZoomBatchState:
    """The mutable per-environment tensors the rules read and write (``B`` envs, ``P`` rows, width ``d``;
    the engine holds ``P = R``, its rows for the current slides, see :mod:`wsigym.envs.zoom_batch`).

    Attributes:
        state: ``S (B, P, d)`` float32, padding rows 0.
        z: ``Z (B, P, d)`` float32, padding rows 0.
        z_norm: ``max(||Z_i||, eps)`` ``(B, P)``.
        valid: ``(B, P)`` bool, True for real patches (the first ``N`` rows of each environment).
        visited: ``(B, P)`` bool, True for zoomed patches.
        updated: ``(B, P)`` bool, True for zoomed or state-updated patches.
    """

    state: Tensor
    z: Tensor
    z_norm: Tensor
    valid: Tensor
    visited: Tensor
    updated: Tensor
    #: The TSU's scan over the rows it can still update (:class:`PendingRows`); ``None``: scan every row.
    pending: PendingRows | None = None


def cosine_to(z: Tensor, z_norm: Tensor, query: Tensor, valid: Tensor | None = None) -> Tensor:
    """``cos(Z_i, q_b)`` for every row: ``z (B, P, d)``, ``z_norm (B, P)``, ``query (B, d)`` -> ``(B, P)``.

    One ``N x d`` scan per environment (the per-step floor of any TSU environment). On CUDA one
    ``bmm`` over the padded rows; on CPU one GEMV per environment over its real rows only (the first
    ``valid[b].sum()`` rows; padding rows get 0), which measured ~2.5x faster than CPU ``bmm`` here
    (``benchmarks/env_speed.py``) and skips the rows past the slide. Norms are
    clamped at :data:`EPS`.
    """
    if z.device.type == "cpu":
        counts = [z.shape[1]] * z.shape[0] if valid is None else valid.sum(-1).tolist()
        dots = z.new_zeros(z.shape[:2])
        for i, n in enumerate(counts):
            dots[i, :n] = torch.mv(z[i, :n], query[i])
    else:
        dots = torch.bmm(z, query.unsqueeze(-1)).squeeze(-1)  # (B, P)
    return dots / (z_norm * query.norm(dim=-1).clamp_min(EPS).unsqueeze(-1))


#: Rows a :class:`PendingRows` scan may carry beyond twice the pending ones before it gathers them afresh.
PENDING_SLACK = 64


class PendingRows:
    r"""Per environment, the low-res rows the TSU can still update, kept together for its scan.

    Only a row never updated can enter :math:`C_{new}`, so the TSU's similarity scan need only cover
    those rows. For each environment this keeps their indices ``rows (m,)``, their ``Z`` rows
    ``(m, d)`` and norms: at first every real row of the slide (views of ``Z``, no copy). Rows a zoom
    updates stay in place and are skipped through ``updated`` until the rows still pending are fewer
    than ``(m - PENDING_SLACK) / 2``; then the pending rows are gathered afresh (in row order). So a scan
    reads at most ``2 x pending + PENDING_SLACK`` rows, and the gathers of an episode copy fewer than
    ``2 N`` rows in all. Rows updated early are the common case: on synth-c16 a random agent at a 20%
    budget leaves ~10% of a slide's rows pending per step on average, so the scan reads ~0.2 of ``Z``.

    Cosines are those of :func:`cosine_to`; a row's dot product may round differently (one ulp) once it
    sits at another position of a gathered block (BLAS blocking), which matters only for a cosine
    within float rounding of ``tau``. Call :meth:`forget` for environments whose slide or rows change.
    """

    def __init__(self, num_envs: int) -> None:
        self._rows: list[np.ndarray | None] = [None] * num_envs
        self._z: list[Tensor | None] = [None] * num_envs
        self._norm: list[np.ndarray | None] = [None] * num_envs

    def forget(self, envs: list[int] | None = None) -> None:
        """Start ``envs`` (default: all) afresh from every real row at their next scan."""
        for e in range(len(self._rows)) if envs is None else envs:
            self._rows[e] = self._z[e] = self._norm[e] = None

    def similar(
        self,
        st: ZoomBatchState,
        env: int,
        query: Tensor,
        query_norm: float,
        anchor: int,
        tau: float,
        absolute_cosine: bool,
    ) -> np.ndarray:
        """Rows ``i`` of environment ``env``, not yet updated and ``!= anchor``, with
        ``cos(Z_i, query) >= tau`` (``|cos|`` with ``absolute_cosine``): int64 ``(k,)``, ascending.

        ``query_norm``: ``max(||query||, EPS)`` (:func:`cosine_to`'s, exact in Z's dtype). The bookkeeping is numpy
        on views of the CPU tensors (a few microseconds per operation less than torch's).
        """
        rows, z, norm = self._rows[env], self._z[env], self._norm[env]
        if rows is None or z is None or norm is None:
            n = int(st.valid[env].sum())
            rows, z, norm = np.arange(n), st.z[env, :n], st.z_norm[env, :n].numpy()
        cos = torch.mv(z, query).numpy() / (norm * norm.dtype.type(query_norm))  # in Z's dtype, as cosine_to
        if absolute_cosine:
            cos = np.abs(cos)
        pending = ~st.updated[env].numpy()[rows]
        pending[rows == anchor] = False
        hit = pending & (cos >= tau)
        pending &= ~hit
        if len(rows) > 2 * int(np.count_nonzero(pending)) + PENDING_SLACK:
            keep = np.flatnonzero(pending)
            self._rows[env], self._z[env], self._norm[env] = rows[keep], z[torch.from_numpy(keep)], norm[keep]
        else:
            self._rows[env], self._z[env], self._norm[env] = rows, z, norm
        return rows[hit]


def cosine_to_anchor(z: Tensor, z_norm: Tensor, anchors: Tensor, valid: Tensor | None = None) -> Tensor:
    """``cos(Z_i, Z_a)`` for every row: ``anchors (B,)`` row indices; see :func:`cosine_to`."""
    b = torch.arange(z.shape[0], device=z.device)
    return cosine_to(z, z_norm, z[b, anchors], valid)


def tsu_rows(
    tsu: Callable[[Tensor, Tensor, Tensor], Tensor], v_a: Tensor, z_a: Tensor, env: Tensor, z_i: Tensor
) -> Tensor:
    r"""``f_S([V(a_e), Z(a_e), Z(i)])`` for rows ``z_i (R, d)`` of environments ``env (R,)``.

    ``v_a``, ``z_a``: ``(B, d)`` anchor rows per environment. A :class:`zoo.models.tsu.TSU` computes
    the rows with :meth:`~zoo.models.tsu.TSU.forward_rows` (the anchor part of its first layer once
    per environment); any other callable is called on the gathered rows.
    """
    forward_rows = getattr(tsu, "forward_rows", None)
    if callable(forward_rows):
        return forward_rows(v_a, z_a, env, z_i)
    return tsu(v_a[env], z_a[env], z_i)


def _write(
    st: ZoomBatchState,
    env: Tensor,
    row: Tensor,
    new: Tensor,
    anchors_env: Tensor,
    anchors_row: Tensor,
    v_anchor: Tensor,
    tsu_count: Tensor,
) -> StateChange:
    """Write ``new`` into ``(env, row)`` and ``V(a)`` into the zoomed rows; mark zoomed rows."""
    env = torch.cat([env, anchors_env])
    row = torch.cat([row, anchors_row])
    new = torch.cat([new, v_anchor])
    old = st.state[env, row]
    st.state[env, row] = new
    st.visited[anchors_env, anchors_row] = True
    st.updated[anchors_env, anchors_row] = True
    return StateChange(env=env, row=row, old=old, new=new, tsu_count=tsu_count)


def _active(anchors: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
    env = active.nonzero().squeeze(-1)
    return env, anchors[env]


def _f_s_rows(
    st: ZoomBatchState,
    tsu: Callable[[Tensor, Tensor, Tensor], Tensor],
    env_a: Tensor,
    v_anchor: Tensor,
    s_anchor: Tensor,
    env: Tensor,
    row: Tensor,
) -> Tensor:
    """``f_S([V(a), s_anchor, Z(i)])`` for the rows ``(env, row)`` (``(R, d)``, the state's dtype)."""
    if not env.numel():
        return st.state.new_zeros(0, st.state.shape[2])
    v_full = torch.zeros(st.z.shape[0], st.z.shape[2], dtype=v_anchor.dtype, device=v_anchor.device)
    v_full[env_a] = v_anchor
    return tsu_rows(tsu, v_full, s_anchor, env, st.z[env, row]).to(st.state.dtype)


#: Where :class:`TSURule` takes the anchor row: SASHA's current state row, or the low-res row.
TSU_ANCHORS = ("state", "lowres")


@dataclass(frozen=True)
class TSURule:
    """The targeted state update (module docstring), called on the ``active (B,)`` environments.

    Attributes:
        anchor: ``"state"`` (SASHA: similarity and ``f_S`` anchor input from ``S_t(a)``) or
            ``"lowres"`` (this project's variant: from ``Z(a)``, the inputs ``f_S`` is trained on).
    """

    anchor: str = "state"

    def __post_init__(self) -> None:
        if self.anchor not in TSU_ANCHORS:
            raise ValueError(f"TSURule.anchor must be one of {TSU_ANCHORS}, got {self.anchor!r}")

    def __call__(
        self,
        st: ZoomBatchState,
        anchors: Tensor,
        active: Tensor,
        v_anchor: Tensor,
        tsu: Callable[[Tensor, Tensor, Tensor], Tensor],
        tau: float,
        absolute_cosine: bool = False,
    ) -> StateChange:
        """``anchors (B,)`` zoomed rows (ignored where inactive), ``v_anchor (B_active, d)`` their oracle rows.

        Only rows not yet updated can enter ``C_new``, and they hold ``S_t(i) = Z(i)``, so the
        similarity scan runs over ``Z`` (with its cached norms) against the anchor row: over every row,
        or, with ``st.pending`` (the engine's CPU path), over the rows still pending (:class:`PendingRows`).
        """
        env_a, row_a = _active(anchors, active)
        b = torch.arange(st.z.shape[0], device=st.z.device)
        source = st.state if self.anchor == "state" else st.z
        s_anchor = source[b, anchors]  # (B, d)
        if st.pending is None:
            cos = cosine_to(st.z, st.z_norm, s_anchor, st.valid)
            if absolute_cosine:
                cos = cos.abs()
            similar = (cos >= tau) & st.valid & active.unsqueeze(-1)
            similar[env_a, row_a] = False
            new_rows = similar & ~st.updated
            env, row = new_rows.nonzero(as_tuple=True)
            counts = new_rows.sum(-1)
        else:  # the same rows, scanning only those not yet updated (PendingRows)
            norms = s_anchor.norm(dim=-1).clamp_min(EPS).tolist()
            found = [
                st.pending.similar(st, e, s_anchor[e], norms[e], a, tau, absolute_cosine)
                for e, a in zip(env_a.tolist(), row_a.tolist(), strict=True)
            ]
            sizes = np.array([len(rows) for rows in found], dtype=np.int64)
            row = torch.from_numpy(np.concatenate(found)) if found else b[:0]
            env = torch.from_numpy(np.repeat(env_a.numpy(), sizes))
            counts = torch.zeros_like(b)
            counts[env_a] = torch.from_numpy(sizes)
        st.updated[env, row] = True  # rows of C updated before stay updated; _write marks the anchor
        new = _f_s_rows(st, tsu, env_a, v_anchor, s_anchor, env, row)
        return _write(st, env, row, new, env_a, row_a, v_anchor, counts)


@dataclass(frozen=True)
class GlobalRule:
    """Every valid, not-yet-zoomed row ``i != a`` <- ``f_S([V(a), Z(a), Z(i)])`` (``tau`` is unused)."""

    def __call__(
        self,
        st: ZoomBatchState,
        anchors: Tensor,
        active: Tensor,
        v_anchor: Tensor,
        tsu: Callable[[Tensor, Tensor, Tensor], Tensor],
        tau: float = 0.0,
        absolute_cosine: bool = False,
    ) -> StateChange:
        env_a, row_a = _active(anchors, active)
        targets = st.valid & ~st.visited & active.unsqueeze(-1)
        targets[env_a, row_a] = False
        env, row = targets.nonzero(as_tuple=True)
        st.updated |= targets
        z_anchor = st.z[torch.arange(st.z.shape[0], device=st.z.device), anchors]
        new = _f_s_rows(st, tsu, env_a, v_anchor, z_anchor, env, row)
        return _write(st, env, row, new, env_a, row_a, v_anchor, targets.sum(-1))


@dataclass(frozen=True)
class NoUpdateRule:
    """Only the zoomed row changes: ``S(a) <- V(a)``."""

    def __call__(
        self,
        st: ZoomBatchState,
        anchors: Tensor,
        active: Tensor,
        v_anchor: Tensor,
        tsu: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
        tau: float = 0.0,
        absolute_cosine: bool = False,
    ) -> StateChange:
        env_a, row_a = _active(anchors, active)
        empty = st.state.new_zeros(0, st.state.shape[2])
        none = torch.zeros(0, dtype=torch.long, device=st.state.device)
        counts = torch.zeros(st.state.shape[0], dtype=torch.long, device=st.state.device)
        return _write(st, none, none, empty, env_a, row_a, v_anchor, counts)


#: The rules as plain functions (same signature), for callers that name one directly.
tsu_update = TSURule()
tsu_lowres_update = TSURule(anchor="lowres")
global_update = GlobalRule()
no_update = NoUpdateRule()

#: Update rule name -> rule ``(state, anchors, active, v_anchor, tsu, tau, absolute_cosine) -> StateChange``.
UPDATE_RULES: dict[str, Callable[..., StateChange]] = {
    "tsu": tsu_update,
    "tsu-lowres": tsu_lowres_update,
    "global": global_update,
    "none": no_update,
}
#: Rules that apply ``f_S`` (and so need a TSU).
RULES_WITH_TSU = ("tsu", "tsu-lowres", "global")
