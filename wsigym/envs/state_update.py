r"""State-update rules after a zoom, batched over ``B`` environments in torch.

Every rule acts on the packed rows of ``B`` episodes (:class:`ZoomBatchState`) and, for each
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

from wsigym.envs.row_slots import Relocation, RowSlots

EPS = 1e-12  # as torch.nn.functional.normalize


@dataclass
class StateChange:
    """Rows written by one update: patch ``row`` of environment ``env`` went from ``old`` to ``new``.

    Shapes: ``env (R,)``, ``row (R,)`` long; ``old (R, d)``, ``new (R, d)``. ``(env, row)`` pairs are
    distinct. ``tsu_count (B,)`` counts the rows updated by ``f_S`` per environment (zoomed row excluded).
    ``flat (R,)``: the rows' packed indices in the :class:`ZoomBatchState` the rule wrote (``None`` for a
    change built elsewhere).
    """

    env: Tensor
    row: Tensor
    old: Tensor
    new: Tensor
    tsu_count: Tensor
    flat: Tensor | None = None


@dataclass
class ZoomBatchState:
    """The mutable per-row tensors of ``B`` episodes that the rules read and write, packed: patch ``i``
    of environment ``b`` is row ``slots.base[b] + i`` (:mod:`wsigym.envs.row_slots`; dead rows, past a
    slide's ``N`` or of an old slot, have ``slots.owner == -1``). Build with :meth:`of_slides` or
    :meth:`empty` and :meth:`load`.

    Attributes:
        slots: where each environment's rows are.
        state: ``S (C, d)`` float, the packed state rows.
        z: per environment its slide's low-res rows ``Z (N_b, d)`` (the source's tensors; never written).
        z_norm: ``max(||Z_i||, eps)`` ``(C,)``.
        visited: ``(C,)`` bool, True for zoomed patches.
        updated: ``(C,)`` bool, True for zoomed or state-updated patches.
        pending: the TSU's scan over the rows it can still update (:class:`PendingRows`);
            ``None``: scan every row.
    """

    slots: RowSlots
    state: Tensor
    z: list[Tensor]
    z_norm: Tensor
    visited: Tensor
    updated: Tensor
    pending: PendingRows | None = None

    @classmethod
    def empty(
        cls,
        num_envs: int,
        dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        pending: bool = False,
    ) -> ZoomBatchState:
        """``num_envs`` environments with no episode yet (``pending``: with a :class:`PendingRows` scan)."""
        return cls(
            slots=RowSlots(num_envs, device),
            state=torch.zeros(0, dim, dtype=dtype, device=device),
            z=[torch.zeros(0, dim, dtype=dtype, device=device)] * num_envs,
            z_norm=torch.ones(0, dtype=dtype, device=device),
            visited=torch.zeros(0, dtype=torch.bool, device=device),
            updated=torch.zeros(0, dtype=torch.bool, device=device),
            pending=PendingRows(num_envs) if pending else None,
        )

    @classmethod
    def of_slides(cls, zs: list[Tensor], pending: bool = False) -> ZoomBatchState:
        """One fresh episode per slide ``zs[b] (N_b, d)``, every row still low-res."""
        st = cls.empty(len(zs), zs[0].shape[1], zs[0].device, zs[0].dtype, pending)
        st.load(list(range(len(zs))), zs)
        return st

    def load(self, envs: list[int], zs: list[Tensor]) -> Relocation | None:
        """Start environment ``envs[j]`` afresh on the low-res rows ``zs[j] (N, d)``: ``S = Z``, no flags.

        Returns the slots' :class:`~wsigym.envs.row_slots.Relocation` when every row moved (other holders
        of packed tensors, e.g. the classifier, apply it too), else ``None``.
        """
        relocation = self.slots.place(envs, [len(z) for z in zs])
        if relocation is not None:
            self.state = relocation.apply(self.state, 0.0)
            self.z_norm = relocation.apply(self.z_norm, 1.0)
            self.visited = relocation.apply(self.visited, False)
            self.updated = relocation.apply(self.updated, False)
            if self.pending is not None:  # its norms are views of the old buffer
                self.pending.forget()
        for e, z in zip(envs, zs, strict=True):
            rows = self.slots.slot(e)
            self.state[rows] = z
            self.z_norm[rows] = z.norm(dim=-1).clamp_min(EPS)
            self.visited[rows] = False
            self.updated[rows] = False
            self.z[e] = z
            if self.pending is not None:
                self.pending.forget([e])
        return relocation

    def rows(self, env: int) -> Tensor:
        """The state rows ``(N_b, d)`` of environment ``env`` (a view)."""
        return self.state[self.slots.slot(env)]

    def lowres_rows(self, env: Tensor, row: Tensor) -> Tensor:
        """``Z`` rows ``(R, d)`` of ``(env, row)`` pairs whose environments are grouped (each one's rows
        consecutive, as every rule lists them)."""
        if not env.numel():
            return self.state.new_zeros(0, self.state.shape[1])
        envs, counts = torch.unique_consecutive(env, return_counts=True)
        parts = row.split(counts.tolist())
        return torch.cat([self.z[e][r] for e, r in zip(envs.tolist(), parts, strict=True)])

    def select(self, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The packed rows where ``mask (C,)`` holds, as ``(flat, env, row)``, ordered by environment
        then row."""
        flat = mask.nonzero().squeeze(-1)
        env = self.slots.owner[flat]
        order = torch.argsort(env, stable=True)  # slots need not lie in environment order
        flat, env = flat[order], env[order]
        return flat, env, flat - self.slots.base_t[env]


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

    Cosines are those of :func:`scan_cosines`; a row's dot product may round differently (one ulp) once it
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

        ``query_norm``: ``max(||query||, EPS)`` (:func:`scan_cosines`'s, exact in Z's dtype). The bookkeeping is numpy
        on views of the CPU tensors (a few microseconds per operation less than torch's).
        """
        rows, z, norm = self._rows[env], self._z[env], self._norm[env]
        if rows is None or z is None or norm is None:
            rows, z, norm = np.arange(int(st.slots.n[env])), st.z[env], st.z_norm[st.slots.slot(env)].numpy()
        cos = torch.mv(z, query).numpy() / (norm * norm.dtype.type(query_norm))  # as scan_cosines
        if absolute_cosine:
            cos = np.abs(cos)
        pending = ~st.updated[st.slots.slot(env)].numpy()[rows]
        pending[rows == anchor] = False
        hit = pending & (cos >= tau)
        pending &= ~hit
        if len(rows) > 2 * int(np.count_nonzero(pending)) + PENDING_SLACK:
            keep = np.flatnonzero(pending)
            self._rows[env], self._z[env], self._norm[env] = rows[keep], z[torch.from_numpy(keep)], norm[keep]
        else:
            self._rows[env], self._z[env], self._norm[env] = rows, z, norm
        return rows[hit]


def scan_cosines(st: ZoomBatchState, query: Tensor, envs: Tensor, batched: bool | None = None) -> Tensor:
    """``cos(S_t(i), query[b])`` for every row ``i`` of the environments ``envs`` (other rows 0): ``(C,)``.

    ``query (B, d)``. The norms of ``S_t(i)`` are ``z_norm``, i.e. exact for the rows never updated,
    the only ones the TSU can add (``S_t(i) = Z(i)`` there). One ``N x d`` scan per environment (the
    per-step floor of any TSU environment): on CPU a GEMV over each slot, which measured ~2.5x faster
    than a batched product here (``benchmarks/env_speed.py``); on CUDA (``batched``, default: by device)
    one product over all packed rows. Norms are clamped at :data:`EPS`.
    """
    if batched is None:
        batched = st.state.device.type != "cpu"
    qn = query.norm(dim=-1).clamp_min(EPS)
    if batched:
        who = st.slots.owner.clamp_min(0)
        dots = (st.state * query[who]).sum(-1)
        take = (st.slots.owner >= 0) & torch.isin(who, envs)
        return torch.where(take, dots / (st.z_norm * qn[who]), 0.0)
    out = st.z_norm.new_zeros(st.z_norm.shape)
    for e in envs.tolist():
        rows = st.slots.slot(e)
        out[rows] = torch.mv(st.state[rows], query[e]) / (st.z_norm[rows] * qn[e])
    return out


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


@dataclass(frozen=True)
class _Zooms:
    """The zoomed rows of the active environments: ``env``, ``row`` and packed index ``flat``, ``(A,)`` each."""

    env: Tensor
    row: Tensor
    flat: Tensor


def _zooms(st: ZoomBatchState, anchors: Tensor, active: Tensor) -> _Zooms:
    env = active.nonzero().squeeze(-1)
    row = anchors[env]
    return _Zooms(env, row, st.slots.flat(env, row))


def _write(
    st: ZoomBatchState,
    env: Tensor,
    row: Tensor,
    flat: Tensor,
    new: Tensor,
    zooms: _Zooms,
    v_anchor: Tensor,
    tsu_count: Tensor,
) -> StateChange:
    """Write ``new`` into the rows ``(env, row)`` (packed ``flat``) and ``V(a)`` into the zoomed rows; mark
    zoomed rows."""
    env = torch.cat([env, zooms.env])
    row = torch.cat([row, zooms.row])
    flat = torch.cat([flat, zooms.flat])
    new = torch.cat([new, v_anchor])
    old = st.state[flat]
    st.state[flat] = new
    st.visited[zooms.flat] = True
    st.updated[zooms.flat] = True
    return StateChange(env=env, row=row, old=old, new=new, tsu_count=tsu_count, flat=flat)


def _anchor_rows(st: ZoomBatchState, zooms: _Zooms, lowres: bool) -> Tensor:
    """``(B, d)``: the zoomed rows ``S_t(a)`` (or ``Z(a)`` with ``lowres``) of the active environments, 0 elsewhere."""
    out = st.state.new_zeros(len(st.z), st.state.shape[1])
    out[zooms.env] = st.lowres_rows(zooms.env, zooms.row) if lowres else st.state[zooms.flat]
    return out


def _f_s_rows(
    tsu: Callable[[Tensor, Tensor, Tensor], Tensor],
    env_a: Tensor,
    v_anchor: Tensor,
    s_anchor: Tensor,
    env: Tensor,
    z_i: Tensor,
) -> Tensor:
    """``f_S([V(a), s_anchor, Z(i)])`` for the rows ``z_i (R, d)`` of environments ``env`` (in ``z_i``'s dtype)."""
    if not env.numel():
        return z_i
    v_full = s_anchor.new_zeros(s_anchor.shape, dtype=v_anchor.dtype)
    v_full[env_a] = v_anchor
    return tsu_rows(tsu, v_full, s_anchor, env, z_i).to(z_i.dtype)


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
        similarity scan compares the anchor row with ``Z(i)`` there (cached norms): over every row of
        the state (:func:`scan_cosines`), or, with ``st.pending`` (the engine's CPU path), over the
        slide's ``Z`` rows still pending (:class:`PendingRows`).
        """
        zooms = _zooms(st, anchors, active)
        env_a, row_a = zooms.env, zooms.row
        s_anchor = _anchor_rows(st, zooms, lowres=self.anchor == "lowres")
        if st.pending is None:
            cos = scan_cosines(st, s_anchor, env_a)
            if absolute_cosine:
                cos = cos.abs()
            # rows of C updated before stay as they are
            similar = (cos >= tau) & ~st.updated & torch.isin(st.slots.owner, env_a)
            similar[zooms.flat] = False
            flat, env, row = st.select(similar)
            counts = torch.bincount(env, minlength=len(st.z))
        else:  # the same rows, scanning only those not yet updated (PendingRows)
            norms = s_anchor.norm(dim=-1).clamp_min(EPS).tolist()
            found = [
                st.pending.similar(st, e, s_anchor[e], norms[e], a, tau, absolute_cosine)
                for e, a in zip(env_a.tolist(), row_a.tolist(), strict=True)
            ]
            sizes = np.array([len(rows) for rows in found], dtype=np.int64)
            row = torch.from_numpy(np.concatenate(found)) if found else env_a[:0]
            env = torch.from_numpy(np.repeat(env_a.numpy(), sizes))
            flat = st.slots.flat(env, row)
            counts = torch.zeros(len(st.z), dtype=torch.long)
            counts[env_a] = torch.from_numpy(sizes)
        st.updated[flat] = True
        new = _f_s_rows(tsu, env_a, v_anchor, s_anchor, env, st.state[flat])  # S_t(i) = Z(i) there
        return _write(st, env, row, flat, new, zooms, v_anchor, counts)


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
        zooms = _zooms(st, anchors, active)
        owner = st.slots.owner
        targets = (owner >= 0) & ~st.visited & torch.isin(owner, zooms.env)
        targets[zooms.flat] = False
        flat, env, row = st.select(targets)
        st.updated[flat] = True
        z_anchor = _anchor_rows(st, zooms, lowres=True)
        new = _f_s_rows(tsu, zooms.env, v_anchor, z_anchor, env, st.lowres_rows(env, row))
        counts = torch.bincount(env, minlength=len(st.z))
        return _write(st, env, row, flat, new, zooms, v_anchor, counts)


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
        zooms = _zooms(st, anchors, active)
        empty = st.state.new_zeros(0, st.state.shape[1])
        none = torch.zeros(0, dtype=torch.long, device=st.state.device)
        counts = torch.zeros(len(st.z), dtype=torch.long, device=st.state.device)
        return _write(st, none, none, none, empty, zooms, v_anchor, counts)


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
