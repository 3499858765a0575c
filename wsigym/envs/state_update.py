r"""State-update rules after a zoom, batched over ``B`` environments in torch.

Every rule acts on padded batches (``P`` = max patches, rows ``>= N`` are padding) and, for each
active environment ``b`` with zoomed patch ``a = anchors[b]``, writes the oracle row
``S(a) <- V(a)``. They differ in which other rows change:

``"tsu"`` (SASHA's targeted state update, ``WSIZoom-v0``)
    .. math::
        C = \{ i \text{ valid} : \cos(Z_i, Z_a) \ge \tau \}, \quad
        C_{new} = C \setminus (\{a\} \cup \text{updated}), \quad
        S(i) \leftarrow f_S([V(a), Z(a), Z(i)]) \;\; \forall i \in C_{new}, \quad
        \text{updated} \leftarrow \text{updated} \cup C \cup \{a\}

    (``|cos|`` with ``absolute_cosine=True``, SASHA's rule, pitfall 6). Similarity and the TSU
    inputs use the low-res features ``Z`` (as ``f_S`` is trained; pitfall 7): a row is TSU-updated
    at most once, so every row the rule can still update holds ``S_t(i) = Z(i)`` and this equals
    SASHA's code on ``S_t``. A zoomed row is always overwritten by ``V`` and never changes again.

``"global"`` (this project's reconstruction of RLogist's global update with the same ``f_S``,
``WSIZoomGlobal-v0``)
    every valid, not-yet-zoomed row ``i != a`` is set to ``f_S([V(a), Z(a), Z(i)])`` after every
    zoom (so it reflects the latest zoom only); all of them count as updated.

``"none"`` (``WSIZoomNoUpdate-v0``)
    only the zoomed row changes.

Each rule returns a :class:`StateChange` listing the rows it wrote with their old and new values,
which is what :class:`wsigym.envs.classifier.IncrementalAttentionClassifier` needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    """The mutable per-environment tensors the rules read and write (``B`` envs, ``P`` rows, width ``d``).

    Attributes:
        state: ``S (B, P, d)`` float32, padding rows 0.
        z: ``Z (B, P, d)`` float32, padding rows 0.
        z_norm: ``max(||Z_i||, eps)`` ``(B, P)``.
        valid: ``(B, P)`` bool, True for real patches.
        visited: ``(B, P)`` bool, True for zoomed patches.
        updated: ``(B, P)`` bool, True for zoomed or state-updated patches.
    """

    state: Tensor
    z: Tensor
    z_norm: Tensor
    valid: Tensor
    visited: Tensor
    updated: Tensor


def cosine_to_anchor(z: Tensor, z_norm: Tensor, anchors: Tensor, valid: Tensor | None = None) -> Tensor:
    """``cos(Z_i, Z_a)`` for every row: ``z (B, P, d)``, ``z_norm (B, P)``, ``anchors (B,)`` -> ``(B, P)``.

    One ``N x d`` scan per environment (the per-step floor of any TSU environment). On CUDA one
    ``bmm`` over the padded rows; on CPU one GEMV per environment over its real rows only (the first
    ``valid[b].sum()`` rows; padding rows get 0), which measured ~2.5x faster than CPU ``bmm`` here
    (``benchmarks/env_speed.py``) and skips the padding to the dataset's largest slide.
    """
    b = torch.arange(z.shape[0], device=z.device)
    za = z[b, anchors]  # (B, d)
    if z.device.type == "cpu":
        counts = [z.shape[1]] * z.shape[0] if valid is None else valid.sum(-1).tolist()
        dots = z.new_zeros(z.shape[:2])
        for i, n in enumerate(counts):
            dots[i, :n] = torch.mv(z[i, :n], za[i])
    else:
        dots = torch.bmm(z, za.unsqueeze(-1)).squeeze(-1)  # (B, P)
    return dots / (z_norm * z_norm[b, anchors].unsqueeze(-1))


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


def tsu_update(
    st: ZoomBatchState,
    anchors: Tensor,
    active: Tensor,
    v_anchor: Tensor,
    tsu: Callable[[Tensor, Tensor, Tensor], Tensor],
    tau: float,
    absolute_cosine: bool = False,
) -> StateChange:
    """SASHA's targeted state update (module docstring) on the ``active (B,)`` environments.

    ``anchors (B,)`` zoomed rows (ignored where inactive), ``v_anchor (B_active, d)`` their oracle rows.
    """
    env_a, row_a = _active(anchors, active)
    cos = cosine_to_anchor(st.z, st.z_norm, anchors, st.valid)
    if absolute_cosine:
        cos = cos.abs()
    similar = (cos >= tau) & st.valid & active.unsqueeze(-1)
    similar[env_a, row_a] = False
    new_rows = similar & ~st.updated
    st.updated |= similar
    env, row = new_rows.nonzero(as_tuple=True)
    tsu_count = new_rows.sum(-1)
    if env.numel():
        v_full = torch.zeros(st.z.shape[0], st.z.shape[2], dtype=v_anchor.dtype, device=v_anchor.device)
        v_full[env_a] = v_anchor
        z_anchor = st.z[torch.arange(st.z.shape[0], device=st.z.device), anchors]
        new = tsu_rows(tsu, v_full, z_anchor, env, st.z[env, row]).to(st.state.dtype)
    else:
        new = st.state.new_zeros(0, st.state.shape[2])
    return _write(st, env, row, new, env_a, row_a, v_anchor, tsu_count)


def global_update(
    st: ZoomBatchState,
    anchors: Tensor,
    active: Tensor,
    v_anchor: Tensor,
    tsu: Callable[[Tensor, Tensor, Tensor], Tensor],
    tau: float = 0.0,
    absolute_cosine: bool = False,
) -> StateChange:
    """Every valid, not-yet-zoomed row ``i != a`` <- ``f_S([V(a), Z(a), Z(i)])`` (``tau`` is unused)."""
    env_a, row_a = _active(anchors, active)
    targets = st.valid & ~st.visited & active.unsqueeze(-1)
    targets[env_a, row_a] = False
    env, row = targets.nonzero(as_tuple=True)
    st.updated |= targets
    if env.numel():
        v_full = torch.zeros(st.z.shape[0], st.z.shape[2], dtype=v_anchor.dtype, device=v_anchor.device)
        v_full[env_a] = v_anchor
        z_anchor = st.z[torch.arange(st.z.shape[0], device=st.z.device), anchors]
        new = tsu_rows(tsu, v_full, z_anchor, env, st.z[env, row]).to(st.state.dtype)
    else:
        new = st.state.new_zeros(0, st.state.shape[2])
    return _write(st, env, row, new, env_a, row_a, v_anchor, targets.sum(-1))


def no_update(
    st: ZoomBatchState,
    anchors: Tensor,
    active: Tensor,
    v_anchor: Tensor,
    tsu: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    tau: float = 0.0,
    absolute_cosine: bool = False,
) -> StateChange:
    """Only the zoomed row changes: ``S(a) <- V(a)``."""
    env_a, row_a = _active(anchors, active)
    empty = st.state.new_zeros(0, st.state.shape[2])
    none = torch.zeros(0, dtype=torch.long, device=st.state.device)
    counts = torch.zeros(st.state.shape[0], dtype=torch.long, device=st.state.device)
    return _write(st, none, none, empty, env_a, row_a, v_anchor, counts)


#: Update rule name -> function ``(state, anchors, active, v_anchor, tsu, tau, absolute_cosine) -> StateChange``.
UPDATE_RULES: dict[str, Callable[..., StateChange]] = {
    "tsu": tsu_update,
    "global": global_update,
    "none": no_update,
}
