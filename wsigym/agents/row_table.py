r"""The per-patch actor-critic evaluated on *row versions*, without building any padded state.

A zoom episode changes few rows per step (the zoomed row and its TSU-updated neighbours), so the
states :math:`S_0, \dots, S_{L-1}` of ``L`` consecutive timesteps of one slide hold only
``V = N + E`` distinct rows: the slide's ``N`` low-res rows ``Z`` and the ``E`` rows the episode wrote
(each row changes at most twice under the TSU). A :class:`RowTable` stores those versions once and,
for every timestep, which version each row holds (``index (L, N)``); the state at timestep ``t`` is
``states[index[t]]``.

:class:`~wsigym.agents.policy.PatchActorCritic` scores every row with gated attention on its token
``x_i = [s_i, visited_i, updated_i, x_i, y_i, b, 1]`` (``tokens="state+context"``) or ``x_i = s_i``
(``tokens="state"``). The first layers are linear, so split by channel,

.. math::
    W x_i(t) = \underbrace{W_s s_{v}}_{\text{per version}} + \underbrace{W_f f_{v} + w_1 + c}_{\text{per version}}
               + \underbrace{w_b\, b_t}_{\text{per timestep}}, \qquad v = \text{index}[t, i],

and with per-observation standardisation :math:`\hat s = (s - \mu_t)/\sigma_t` the state term becomes
:math:`(W_s s_v - W_s \mu_t)/\sigma_t`. :func:`version_terms` computes the per-version parts once
(one ``V x d`` product per head instead of ``L x N x d``); :func:`table_outputs` adds the per-timestep
parts, applies the gates and pools. When neither a budget channel nor standardisation is present the
gates themselves are per version, and :func:`held_outputs` gives the log-probabilities, entropies and
critic latents from softmax sums over each version's interval of timesteps
(:mod:`~wsigym.agents.held_sums`), in ``O((V + L) log L)`` instead of gathering ``L x N`` scores.

The critic's pooled token :math:`\sum_i w_i(t) x_i(t)` enters the critic MLP's first layer ``P``
linearly, so the critic pools the versions' projections :math:`P_s s_v` (``critic_hidden`` wide, cached
with the gates' terms): a ``(L, V) @ (V, c)`` product of the attention weights scattered onto the versions. Everything equals
:meth:`~wsigym.agents.policy.PatchActorCritic.forward` on the padded observations to float rounding
(``tests/agents/test_segments.py``).
"""

from __future__ import annotations

from itertools import accumulate
from typing import NamedTuple

import torch
from torch import Tensor

from wsigym.agents.held_sums import HeldTree, held_softmax, pack
from zoo.nn import GatedAttention

#: Channels of a version's flags: visited, updated, x, y.
FLAG_CHANNELS = 4
STANDARDISE_EPS = 1e-6  # as wsigym.agents.policy.standardise_state


class RowTable(NamedTuple):
    """``L`` timesteps of one slide as row versions (module docstring).

    ``mean``/``scale`` are the per-timestep standardisation statistics (:func:`table_statistics`),
    ``None`` for a policy that does not standardise.
    """

    states: Tensor  #: ``(V, d)`` the row values, the slide's ``N`` low-res rows first
    flags: Tensor  #: ``(V, 4)`` visited, updated, x, y of each version
    index: Tensor  #: ``(L, N)`` long, the version each row holds at each timestep
    budget: Tensor  #: ``(L,)`` remaining budget fraction
    mean: Tensor | None = None  #: ``(L, d)`` mean row of each state
    scale: Tensor | None = None  #: ``(L,)`` RMS spread of each state (+ eps)
    held: HeldTree | None = None  #: when each version is held (:func:`~wsigym.agents.held_sums.held_tree`)


class SegmentBatch(NamedTuple):
    """The observations of a minibatch of the structured rollout buffer: its timesteps are those of
    ``tables`` in order. ``mask_updated``: the legal patches are the not-updated ones (else not zoomed)."""

    tables: list[RowTable]
    mask_updated: bool = False


def table_statistics(states: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    r"""Per-timestep mean row and spread of the states of a table, as
    :func:`~wsigym.agents.policy.standardise_state`: ``mean (L, d)``, ``scale (L,)`` =
    :math:`\sqrt{\overline{(s - \bar s)^2}} + \epsilon` over rows and channels (float64 sums)."""
    steps, n = index.shape
    counts = states.new_zeros(steps, states.shape[0], dtype=torch.float64)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    s64 = states.double()
    return standardisation(counts @ s64, counts @ s64.square().sum(-1), n, states.dtype)


def standardisation(
    total: Tensor, square: Tensor, n: int | Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``mean (L, d)`` and ``scale (L,)`` of :func:`table_statistics` from the float64 sums of ``n``
    rows (an int, or ``(L,)`` counts), ``total (L, d)``, and of their squared norms, ``square (L,)``."""
    count = torch.as_tensor(n, dtype=torch.float64, device=total.device).reshape(-1)
    mean = total / count[:, None]
    var = (square / count - mean.square().sum(-1)).clamp_min(0.0) / total.shape[-1]
    return mean.to(dtype), (var.sqrt() + STANDARDISE_EPS).to(dtype)


class GateWeights(NamedTuple):
    """The four gates' first layers (actor tanh/gate, critic tanh/gate) stacked and split by channel:
    ``K`` output rows in all. Built once per forward pass (or once per rollout) by :func:`gate_weights`."""

    state: Tensor  #: ``(K, d)``
    bias: Tensor  #: ``(K,)``
    stacked: Tensor  #: ``(K + c, d)``: ``state`` over the critic MLP's state columns ``P_s``
    flags: Tensor | None  #: ``(K, 4)`` visited, updated, x, y (``None``: state-only tokens)
    budget: Tensor | None  #: ``(K,)``
    valid: Tensor | None  #: ``(K,)``


def _heads(actor: GatedAttention, critic: GatedAttention) -> list[torch.nn.Linear]:
    return [actor.tanh_branch, actor.gate_branch, critic.tanh_branch, critic.gate_branch]


def _widths(actor: GatedAttention, critic: GatedAttention) -> list[int]:
    return [layer.out_features for layer in _heads(actor, critic)]


def gate_weights(
    actor: GatedAttention, critic: GatedAttention, critic_mlp: torch.nn.Sequential, dim: int
) -> GateWeights:
    """:class:`GateWeights` of an actor-critic whose state rows are ``dim`` wide."""
    weight = torch.cat([layer.weight for layer in _heads(actor, critic)])  # (K, token width)
    bias = torch.cat([layer.bias for layer in _heads(actor, critic)])
    stacked = torch.cat([weight[:, :dim], critic_mlp[0].weight[:, :dim]])
    if weight.shape[1] == dim:
        return GateWeights(weight, bias, stacked, None, None, None)
    f = dim + FLAG_CHANNELS
    return GateWeights(weight[:, :dim], bias, stacked, weight[:, dim:f], weight[:, f], weight[:, f + 1])


def version_terms(
    actor: GatedAttention,
    critic: GatedAttention,
    critic_mlp: torch.nn.Sequential,
    weights: GateWeights,
    states: Tensor,
    flags: Tensor,
    per_step: bool,
) -> Tensor:
    """Everything the policy computes from a version alone: ``(V, g + c)``.

    The first ``g`` columns are the gates' part: ``[W_s s_v | W_f f_v + w_1 + c]`` ``(2K)`` when
    ``per_step`` (the timestep adds to it), else the two gated-attention scores of the version
    (actor logit, critic score). The last ``c`` are the state's projection by the critic MLP's first
    layer, ``P_s s_v`` (``critic_hidden``): the pooled token enters that layer linearly, so the critic
    pools ``c``-wide projections instead of ``d``-wide rows.
    """
    fixed = weights.bias.expand(states.shape[0], -1)
    if weights.flags is not None:  # flags (4 channels) and the valid channel (always 1 on a real row)
        fixed = torch.addmm(weights.bias + weights.valid, flags, weights.flags.T)
    k = weights.state.shape[0]
    both = states @ weights.stacked.T  # (V, K + c)
    state_part, projection = both[:, :k], both[:, k:]
    gates = torch.cat([state_part, fixed], dim=-1) if per_step else _scores(actor, critic, state_part + fixed)
    return torch.cat([gates, projection], dim=-1)


def _scores(actor: GatedAttention, critic: GatedAttention, pre: Tensor) -> Tensor:
    """Gate pre-activations ``(..., K)`` -> the actor logit and critic score ``(..., 2)``."""
    ha, ga, hc, gc = pre.split(_widths(actor, critic), dim=-1)
    logit = actor.score(torch.tanh(ha) * torch.sigmoid(ga))
    score = critic.score(torch.tanh(hc) * torch.sigmoid(gc))
    return torch.cat([logit, score], dim=-1)


def row_scores(
    actor: GatedAttention,
    critic: GatedAttention,
    weights: GateWeights,
    gates: Tensor,
    budget: Tensor,
    mean: Tensor | None,
    scale: Tensor | None,
    per_step: bool,
) -> Tensor:
    """Actor logit and critic score ``(L, N, 2)`` of ``N`` rows at each of ``L`` timesteps, from the gate
    columns of their versions' :func:`version_terms` ``gates (L, N, g)``, the remaining budget ``(L,)``
    and, for a standardising policy, the states' ``mean (L, d)`` and ``scale (L,)``."""
    if not per_step:
        return gates
    k = gates.shape[-1] // 2
    state_part, fixed = gates[..., :k], gates[..., k:]  # (L, N, K)
    if mean is not None and scale is not None:
        shift = mean @ weights.state.T  # (L, K)
        state_part = (state_part - shift[:, None]) / scale[:, None, None]
    pre = state_part + fixed
    if weights.budget is not None:
        pre = pre + budget[:, None, None] * weights.budget
    return _scores(actor, critic, pre)


def table_outputs(
    actor: GatedAttention,
    critic: GatedAttention,
    critic_mlp: torch.nn.Sequential,
    weights: GateWeights,
    table: RowTable,
    terms: Tensor,
    per_step: bool,
) -> tuple[Tensor, Tensor]:
    """Actor logits ``(L, N)`` and critic latent ``(L, critic_hidden)`` of every timestep of ``table``.

    ``terms`` is :func:`version_terms` of ``table.states`` (computed with gradients in training,
    cached between steps in a rollout).
    """
    index, budget = table.index, table.budget
    steps, n = index.shape
    c = critic_mlp[0].out_features
    gates, projection = terms[:, :-c], terms[:, -c:]
    held = gates.index_select(0, index.reshape(-1)).view(
        steps, n, -1
    )  # (L, N, g); backward ~2x gates[index]'s
    scores = row_scores(actor, critic, weights, held, budget, table.mean, table.scale, per_step)
    logits, critic_scores = scores[..., 0], scores[..., 1]
    attention = torch.softmax(critic_scores, dim=-1)  # (L, N): every row of a table is real
    on_versions = attention.new_zeros(steps, table.states.shape[0]).scatter(1, index, attention)  # (L, V)
    pooled_flags = on_versions @ table.flags if weights.flags is not None else None  # (L, 4)
    rows = budget.new_full((steps,), n)
    latent = critic_latent(
        critic_mlp, weights, on_versions @ projection, budget, rows, pooled_flags, table.mean, table.scale
    )
    return logits, latent


def current_outputs(
    actor: GatedAttention,
    critic: GatedAttention,
    critic_mlp: torch.nn.Sequential,
    weights: GateWeights,
    terms: Tensor,
    flags: Tensor,
    valid: Tensor,
    budget: Tensor,
    mean: Tensor | None,
    scale: Tensor | None,
    per_step: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`table_outputs` of the current states of ``B`` episodes given side by side: their rows'
    :func:`version_terms` ``terms (B, W, g + c)`` and flags ``(B, W, 4)``, padded to ``W`` rows
    (``valid (B, W)``), remaining budgets ``(B,)`` and (standardising policy) ``mean (B, d)``,
    ``scale (B,)``. Returns logits ``(B, W)`` (padding rows unmasked) and critic latents ``(B, c')``."""
    c = critic_mlp[0].out_features
    scores = row_scores(actor, critic, weights, terms[..., :-c], budget, mean, scale, per_step)
    attention = torch.softmax(scores[..., 1].masked_fill(~valid, float("-inf")), dim=-1)[:, None]  # (B, 1, W)
    pooled = torch.bmm(attention, terms[..., -c:])[:, 0]  # P_s (sum_i w_i s_i): (B, c)
    pooled_flags = torch.bmm(attention, flags)[:, 0] if weights.flags is not None else None
    rows = valid.sum(-1).to(budget.dtype)
    return scores[..., 0], critic_latent(critic_mlp, weights, pooled, budget, rows, pooled_flags, mean, scale)


def critic_latent(
    critic_mlp: torch.nn.Sequential,
    weights: GateWeights,
    pooled: Tensor,
    budget: Tensor,
    rows: Tensor,
    pooled_flags: Tensor | None = None,
    mean: Tensor | None = None,
    scale: Tensor | None = None,
) -> Tensor:
    """The critic latent ``(L, critic_hidden)`` from the attention-pooled state projection
    ``pooled = P_s sum_i w_i s_i (L, c)``: standardised with ``mean (L, d)``, ``scale (L,)`` when given,
    plus the pooled context channels ``pooled_flags (L, 4)`` (context tokens), the size features
    ``[b, n/1000, b n/1000]`` (``budget (L,)``, ``rows (L,)`` real patches), the bias, and the rest of the
    critic MLP."""
    first = critic_mlp[0]
    d = weights.state.shape[1]
    hidden = pooled
    b = budget[:, None]
    if mean is not None and scale is not None:  # P_s (pooled - mean) / scale
        hidden = (hidden - mean @ first.weight[:, :d].T) / scale[:, None]
    if pooled_flags is not None:  # the context channels of the pooled token
        hidden = hidden + pooled_flags @ first.weight[:, d : d + FLAG_CHANNELS].T
        hidden = hidden + b * first.weight[:, d + FLAG_CHANNELS] + first.weight[:, d + FLAG_CHANNELS + 1]
    size = rows[:, None] / 1000.0
    width = first.in_features - 3  # the token
    hidden = hidden + torch.cat([b, size, b * size], dim=-1) @ first.weight[:, width:].T + first.bias
    return critic_mlp[1:](hidden)


def held_outputs(
    critic_mlp: torch.nn.Sequential,
    weights: GateWeights,
    tables: list[RowTable],
    terms: list[Tensor],
    actions: Tensor,
    mask_updated: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Log-probabilities and entropies ``(T,)`` of ``actions (T,)`` and critic latents
    ``(T, critic_hidden)`` of the ``T`` timesteps of ``tables``, for a policy whose row scores are
    per version (``per_step`` false: ``terms`` are :func:`version_terms` ``[logit, score, P_s s_v]``).

    The same numbers as :func:`table_outputs` followed by the masked categorical, without the
    ``(T, N)`` gathers: the actor's normaliser and mean logit over the legal held versions and the
    critic's attention pooling are :func:`~wsigym.agents.held_sums.held_softmax` sums
    (:math:`H_t = \text{lse}_t - \sum_i \pi_i \ell_i`). Every table needs its ``held`` tree.
    """
    flag = 1 if mask_updated else 0
    sizes = [t.states.shape[0] for t in tables]
    tree = pack([t.held for t in tables], sizes)  # type: ignore[misc]
    every = torch.cat(terms)
    logit, score, projection = every[:, 0], every[:, 1], every[:, 2:]
    legal = torch.cat([t.flags[:, flag] < 0.5 for t in tables])
    keep = legal[tree.version]
    legal_tree = tree._replace(version=tree.version[keep], node=tree.node[keep])
    lse, mean_logit = held_softmax(logit, logit[:, None], legal_tree)
    _, pooled = held_softmax(score, projection, tree)
    offsets = accumulate([0, *sizes[:-1]])
    steps = [t.index.shape[0] for t in tables]
    chosen = torch.cat(
        [
            t.index.gather(1, a[:, None])[:, 0] + offset
            for t, a, offset in zip(tables, actions.split(steps), offsets, strict=True)
        ]
    )
    budget = torch.cat([t.budget for t in tables])
    rows = torch.cat([t.budget.new_full((t.index.shape[0],), t.index.shape[1]) for t in tables])
    latent = critic_latent(critic_mlp, weights, pooled, budget, rows)
    return logit.index_select(0, chosen) - lse, lse - mean_logit[:, 0], latent
