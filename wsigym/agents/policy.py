r"""A permutation-equivariant actor-critic for ``WSIZoom`` with sb3-contrib's ``MaskablePPO``.

Each padded patch row becomes a token :math:`x_i = [s_i, \text{visited}_i, \text{updated}_i,
\text{coords}_i, \text{budget}, \text{valid}_i] \in \mathbb{R}^{d+6}` (``tokens="state+context"``,
the default) or :math:`x_i = s_i \in \mathbb{R}^d` (``tokens="state"``: SASHA's actor and critic read the
state rows only).

- **Actor** (SASHA's): a gated-attention scorer shared over patches,
  :math:`\ell_i = w^\top(\tanh(V x_i) \odot \sigma(U x_i))`, used directly as the categorical logits
  over patches, so the policy is defined for any number of patches and equivariant to their order.
  Invalid and already-zoomed patches are removed by MaskablePPO's action masks (the same masks in
  rollout and in the update, unlike SASHA's public code).
- **Critic**: gated-attention pooling over the valid patches, then an MLP to one value.

:class:`PatchTokens` (SB3's features extractor) gathers the tokens of the real patches only
(:class:`PatchRows`, ``(M, d+6)`` with ``M`` the real patches of the batch, not ``B*P``), which both
heads share; SB3 hands the features to the ``mlp_extractor`` unread. ``action_net`` is an identity:
the actor's latent *is* the vector of per-patch logits (``latent_dim_pi = P``).

:func:`warm_start_from_hafed` optionally copies HAFED's level-2 attention into the actor, so the
initial greedy policy is "zoom where the frozen classifier attends" and PPO improves from there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from wsigym.agents.row_table import (
    GateWeights,
    RowTable,
    SegmentBatch,
    current_outputs,
    gate_weights,
    held_outputs,
    table_outputs,
    version_terms,
)
from zoo.nn import GatedAttention, masked_softmax

EXTRA_CHANNELS = 6  # visited, updated, x, y, budget, valid
#: What a patch token holds: the state row and the six context channels, or the state row alone.
TOKENS = ("state+context", "state")
#: Logit of padding rows (never legal; MaskablePPO's masks use the same value).
PAD_LOGIT = -1e8


def token_dim(dim: int, tokens: str) -> int:
    """Width of a patch token: ``d + 6`` for ``"state+context"``, ``d`` for ``"state"``."""
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}, got {tokens!r}")
    return dim + EXTRA_CHANNELS if tokens == "state+context" else dim


def _patches_and_dim(observation_space: spaces.Dict) -> tuple[int, int]:
    p = int(observation_space["patch_mask"].shape[0])
    return p, int(
        observation_space["state"].shape[-1]
        if len(observation_space["state"].shape) == 2
        else observation_space["state"].shape[0] // p
    )


class PatchRows(NamedTuple):
    """The real patches of a batch of observations as tokens: what :class:`PatchTokens` hands the actor-critic.

    Only real rows are kept (gathered batch-major, ``M = sum_b N_b``): a batch padded to the largest
    slide spends most of its rows on padding otherwise.
    """

    rows: Tensor  #: ``(M, d+6)`` tokens of the real patches, batch-major
    valid: Tensor  #: ``(B, P)`` bool, True for a real patch (``rows`` are ``tokens[valid]``)
    batch: Tensor  #: ``(M,)`` the observation each row belongs to
    budget: Tensor  #: ``(B, 1)`` remaining budget fraction


class PatchTokens(BaseFeaturesExtractor):
    """Observation dict -> :class:`PatchRows` (see :func:`patch_rows`).

    Accepts the state either as ``(P, d)`` or flattened ``(P*d,)``. ``P`` is read from the batch, so
    the same weights run on any padding. ``standardise`` standardises the state channels per
    observation (:func:`standardise_state`), once for both heads. SB3 passes the features unread to
    the ``mlp_extractor``; ``features_dim`` is nominal (``P*(d+6)``).
    """

    def __init__(
        self, observation_space: spaces.Dict, standardise: bool = False, tokens: str = "state+context"
    ) -> None:
        p, d = _patches_and_dim(observation_space)
        super().__init__(observation_space, features_dim=p * token_dim(d, tokens))
        self.num_patches, self.dim, self.standardise, self.tokens = p, d, standardise, tokens

    def forward(self, obs: dict[str, Tensor]) -> PatchRows:  # type: ignore[override]
        return patch_rows(obs, self.dim, self.standardise, self.tokens == "state+context")


def patch_rows(
    obs: dict[str, Tensor], dim: int, standardise: bool = False, context: bool = True
) -> PatchRows:
    """Observation tensors (batched, any padded P) -> the tokens of the real patches.

    Token ``i`` is ``[S_i (d), visited_i, updated_i, x_i, y_i, budget, valid_i]`` (``S_i`` alone
    without ``context``); with ``standardise`` the ``S_i`` are standardised per observation
    (:func:`standardise_state`).
    """
    mask = obs["patch_mask"]
    b, p = mask.shape[0], mask.shape[-1]
    valid = mask.reshape(b, p) > 0.5
    budget = obs["budget"].float().reshape(b, 1)
    rows = obs["state"].reshape(b, p, dim)[valid].float()
    if context:
        extra = torch.cat(
            [
                obs["visited"].float().reshape(b, p, 1),
                obs["updated"].float().reshape(b, p, 1),
                obs["coords"].float().reshape(b, p, 2),
                budget.reshape(b, 1, 1).expand(b, p, 1),
                valid.float().reshape(b, p, 1),
            ],
            dim=-1,
        )
        rows = torch.cat([rows, extra[valid]], dim=-1)
    features = PatchRows(rows, valid, valid.nonzero()[:, 0], budget)
    return features._replace(rows=standardise_state(features, dim)) if standardise else features


def standardise_state(features: PatchRows, dim: int, eps: float = 1e-6) -> Tensor:
    r"""Tokens with the state channels standardised per observation: ``(M, d+6)``.

    For the real rows :math:`s_i` of one observation,
    :math:`\hat s_i = (s_i - \bar s) / \sigma` with :math:`\bar s` their mean and :math:`\sigma` the
    root-mean-square of :math:`s_i - \bar s` over rows and channels (one scalar per observation). The six
    extra channels pass unchanged. Permutation-equivariant and independent of the padding.
    """
    valid, batch = features.valid, features.batch
    count = valid.sum(-1).clamp_min(1).to(features.rows.dtype)  # (B,)
    state, extra = features.rows[:, :dim], features.rows[:, dim:]
    mean = state.new_zeros(valid.shape[0], dim).index_add(0, batch, state) / count[:, None]
    centred = state - mean[batch]
    var = state.new_zeros(valid.shape[0]).index_add(0, batch, centred.square().sum(-1)) / (count * dim)
    return torch.cat([centred / (var.sqrt() + eps)[batch, None], extra], dim=-1)


class PatchActorCritic(nn.Module):
    r"""SB3 ``mlp_extractor``: per-patch actor logits and an attention-pooled critic latent.

    Args:
        num_patches: P of the observation space (``latent_dim_pi``); ``forward`` accepts any P.
        token_dim: ``d + 6`` (``tokens="state+context"``) or ``d`` (``"state"``).
        hidden: width of the actor's gated attention (SASHA: 128; HAFED's ``attn_dim`` for a warm start).
        critic_hidden: width of the critic's latent.
        critic_attention: width of the critic's gated attention (default ``hidden``).

    The critic pools the valid tokens with gated attention, :math:`h = \sum_i w_i x_i`, and adds
    three size features :math:`[b, n/1000, b\,n/1000]` (``b`` the remaining budget fraction,
    ``n`` the number of real patches), because with :math:`\gamma = 1` and a per-step reward the
    value scales with the number of steps left, which a normalised pooling cannot see.

    Shapes: ``forward(PatchRows(rows (M, d+6), valid (B, P), batch (M,), budget (B, 1)))`` ->
    ``(logits (B, P), latent_vf (B, critic_hidden))``.
    """

    def __init__(
        self,
        num_patches: int,
        token_dim: int,
        hidden: int = 128,
        critic_hidden: int = 64,
        critic_attention: int | None = None,
    ) -> None:
        super().__init__()
        self.num_patches, self.token_dim = num_patches, token_dim
        self.latent_dim_pi = num_patches
        self.latent_dim_vf = critic_hidden
        self.actor = GatedAttention(token_dim, hidden, branches=1)
        self.critic_attention = GatedAttention(token_dim, critic_attention or hidden, branches=1)
        self.critic_mlp = nn.Sequential(nn.Linear(token_dim + 3, critic_hidden), nn.Tanh())

    @staticmethod
    def _scores(attention: GatedAttention, features: PatchRows) -> Tensor:
        """One gated-attention score per patch ``(B, P)``, padding rows ``PAD_LOGIT``."""
        out = features.rows.new_full(features.valid.shape, PAD_LOGIT)
        out[features.valid] = attention(features.rows)[0]
        return out

    def forward_actor(self, features: PatchRows) -> Tensor:
        r"""Per-patch logits ``(B, P)``: :math:`\ell_i = w^\top(\tanh(V x_i) \odot \sigma(U x_i))`."""
        return self._scores(self.actor, features)

    def forward_critic(self, features: PatchRows) -> Tensor:
        """Critic latent ``(B, critic_hidden)`` from the attention-pooled real tokens."""
        valid = features.valid
        weights = masked_softmax(self._scores(self.critic_attention, features), valid)[valid]  # (M,)
        pooled = features.rows.new_zeros(valid.shape[0], self.token_dim)
        pooled = pooled.index_add(0, features.batch, weights[:, None] * features.rows)
        n = valid.sum(-1, keepdim=True).float() / 1000.0
        budget = features.budget
        return self.critic_mlp(torch.cat([pooled, budget, n, budget * n], dim=-1))

    def forward(self, features: PatchRows) -> tuple[Tensor, Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def gate_weights(self, dim: int) -> GateWeights:
        """The gates' first layers stacked and split by channel (:mod:`wsigym.agents.row_table`)."""
        return gate_weights(self.actor, self.critic_attention, self.critic_mlp, dim)

    def version_terms(self, weights: GateWeights, states: Tensor, flags: Tensor, per_step: bool) -> Tensor:
        """:func:`~wsigym.agents.row_table.version_terms` of this actor-critic."""
        return version_terms(
            self.actor, self.critic_attention, self.critic_mlp, weights, states, flags, per_step
        )

    def table_outputs(
        self, weights: GateWeights, table: RowTable, terms: Tensor, per_step: bool
    ) -> tuple[Tensor, Tensor]:
        """Logits ``(L, N)`` and critic latent ``(L, critic_hidden)`` of a :class:`RowTable`
        (:func:`~wsigym.agents.row_table.table_outputs`): what :meth:`forward` gives on its states."""
        return table_outputs(
            self.actor, self.critic_attention, self.critic_mlp, weights, table, terms, per_step
        )

    def current_outputs(
        self,
        weights: GateWeights,
        terms: Tensor,
        flags: Tensor,
        valid: Tensor,
        budget: Tensor,
        mean: Tensor | None,
        scale: Tensor | None,
        per_step: bool,
    ) -> tuple[Tensor, Tensor]:
        """Logits ``(B, W)`` and critic latents of ``B`` current states given as their rows' version terms
        side by side (:func:`~wsigym.agents.row_table.current_outputs`)."""
        return current_outputs(
            self.actor,
            self.critic_attention,
            self.critic_mlp,
            weights,
            terms,
            flags,
            valid,
            budget,
            mean,
            scale,
            per_step,
        )

    def forward_tables(
        self,
        weights: GateWeights,
        tables: list[RowTable],
        terms: list[Tensor],
        mask_updated: bool,
        per_step: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Row tables (``T`` timesteps in all) with their :meth:`version_terms` -> logits ``(T, N_max)``
        (padding :data:`PAD_LOGIT`), legal-action masks ``(T, N_max)`` (not zoomed; not updated with
        ``mask_updated``) and critic latents ``(T, critic_hidden)``, ``N_max`` the largest slide."""
        width = max(t.index.shape[1] for t in tables)
        flag = 1 if mask_updated else 0
        logits, masks, latents = [], [], []
        for table, table_terms in zip(tables, terms, strict=True):
            out, latent = self.table_outputs(weights, table, table_terms, per_step)
            pad = width - out.shape[1]
            logits.append(torch.nn.functional.pad(out, (0, pad), value=PAD_LOGIT))
            legal = table.flags[table.index, flag] < 0.5
            masks.append(torch.nn.functional.pad(legal, (0, pad), value=False))
            latents.append(latent)
        return torch.cat(logits), torch.cat(masks), torch.cat(latents)

    def forward_segments(self, batch: SegmentBatch, per_step: bool) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward_tables` of a :class:`SegmentBatch`, its version terms computed here."""
        weights, terms = self._segment_terms(batch, per_step)
        return self.forward_tables(weights, batch.tables, terms, batch.mask_updated, per_step)

    def evaluate_held(self, batch: SegmentBatch, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probabilities and entropies ``(T,)`` of ``actions`` and critic latents of a
        :class:`SegmentBatch` whose tables have ``held`` trees, for per-version scores (``per_step``
        false): :func:`~wsigym.agents.row_table.held_outputs`."""
        weights, terms = self._segment_terms(batch, per_step=False)
        return held_outputs(self.critic_mlp, weights, batch.tables, terms, actions, batch.mask_updated)

    def _segment_terms(self, batch: SegmentBatch, per_step: bool) -> tuple[GateWeights, list[Tensor]]:
        weights = self.gate_weights(batch.tables[0].states.shape[1])
        return weights, [self.version_terms(weights, t.states, t.flags, per_step) for t in batch.tables]


def masked_categorical(logits: Tensor, masks: Tensor) -> MaskableCategoricalDistribution:
    """sb3-contrib's masked categorical over the ``(B, n)`` logits of any width ``n`` (the policy's own
    ``action_dist`` is fixed to the observation space's ``P``)."""
    distribution = MaskableCategoricalDistribution(logits.shape[-1]).proba_distribution(action_logits=logits)
    distribution.apply_masking(masks)
    return distribution


class PatchPolicy(MaskableMultiInputActorCriticPolicy):
    """MaskablePPO policy for ``WSIZoom`` observations (see the module docstring).

    Extra keyword arguments: ``hidden`` (actor attention width, default 128), ``critic_hidden``
    (default 64), ``critic_attention`` (critic attention width, default ``hidden``), ``tokens``
    (:data:`TOKENS`, default ``"state+context"``) and ``standardise`` (default off): standardise the state channels per observation before both heads
    (:func:`standardise_state`). Slide features share a large common offset (on synth-c16 the slide
    mean row has norm 11.46 against 11.94 for a row, ``examples/policy_gradient_probe.py``), so
    without it the patch-to-patch differences a scorer must learn are a small part of its input. It must stay off for a HAFED warm start (HAFED's attention
    reads raw rows). ``ortho_init`` is off by default (the gated attention keeps PyTorch's
    initialisation, as SASHA).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Any,
        hidden: int = 128,
        critic_hidden: int = 64,
        critic_attention: int | None = None,
        standardise: bool = False,
        tokens: str = "state+context",
        **kwargs: Any,
    ) -> None:
        token_dim(1, tokens)  # checks the name
        self.hidden, self.critic_hidden, self.critic_attention = hidden, critic_hidden, critic_attention
        self.standardise, self.tokens = standardise, tokens
        kwargs.setdefault("features_extractor_class", PatchTokens)
        kwargs.setdefault("features_extractor_kwargs", {"standardise": standardise, "tokens": tokens})
        kwargs.setdefault("ortho_init", False)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        p, d = _patches_and_dim(self.observation_space)
        self.mlp_extractor = PatchActorCritic(
            p, token_dim(d, self.tokens), self.hidden, self.critic_hidden, self.critic_attention
        )

    @property
    def per_step(self) -> bool:
        """Whether a row's gates depend on the timestep (a budget channel or standardisation), not only
        on its version (:mod:`wsigym.agents.row_table`)."""
        return self.standardise or self.tokens == "state+context"

    def evaluate_actions(  # type: ignore[override]
        self, obs: Any, actions: Tensor, action_masks: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """SB3's ``evaluate_actions``; also takes a :class:`SegmentBatch` (the structured rollout
        buffer's observations, :mod:`wsigym.agents.segments`), whose masks it reads itself."""
        if not isinstance(obs, SegmentBatch):
            return super().evaluate_actions(obs, actions, action_masks=action_masks)
        if not self.per_step and all(t.held is not None for t in obs.tables):
            log_prob, entropy, latent_vf = self.mlp_extractor.evaluate_held(obs, actions)
            return self.value_net(latent_vf), log_prob, entropy
        logits, masks, latent_vf = self.mlp_extractor.forward_segments(obs, self.per_step)
        distribution = masked_categorical(logits, masks)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()  # the actor's latent already is one logit per patch
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            hidden=self.hidden,
            critic_hidden=self.critic_hidden,
            critic_attention=self.critic_attention,
            standardise=self.standardise,
            tokens=self.tokens,
        )
        return data


@torch.no_grad()
def warm_start_from_hafed(policy: PatchPolicy, hafed: nn.Module) -> None:
    r"""Initialise the actor (and the critic's pooling) with HAFED's level-2 gated attention.

    HAFED scores patch ``i`` of the state with ``M`` branches, :math:`a_{m,i} = w_m^\top(\tanh(V s_i)
    \odot \sigma(U s_i)) + c_m`. The actor gets ``V``, ``U`` on the state channels (the six extra
    channels start with zero weight) and the branch-averaged score :math:`\bar w, \bar c`, so its
    logit is :math:`\bar a_i` and the greedy policy starts as "zoom the unzoomed patch HAFED attends
    most in the current state". The critic's attention gets the same weights when it has the same
    width (it then pools the state as HAFED does). Needs the policy's ``hidden`` equal to HAFED's
    ``attn_dim`` and the token width ``d + 6`` with HAFED's ``d``.

    Raises:
        ValueError: naming the width that does not match.
    """
    src: GatedAttention = hafed.level2_attention
    d = src.tanh_branch.in_features
    extractor: PatchActorCritic = policy.mlp_extractor
    if policy.standardise:
        raise ValueError("warm start needs standardise=False: HAFED's attention reads the raw state rows")
    if extractor.token_dim != token_dim(d, policy.tokens):
        raise ValueError(
            f"warm start: HAFED's state width is {d}, the policy's tokens are {extractor.token_dim} wide"
        )
    width = src.tanh_branch.out_features
    if extractor.actor.tanh_branch.out_features != width:
        raise ValueError(
            f"warm start needs the actor width = HAFED's attn_dim = {width}, "
            f"the policy has {extractor.actor.tanh_branch.out_features}"
        )
    targets = [extractor.actor]
    if extractor.critic_attention.tanh_branch.out_features == width:
        targets.append(extractor.critic_attention)
    for dst in targets:
        for name in ("tanh_branch", "gate_branch"):
            s, t = getattr(src, name), getattr(dst, name)
            t.weight.zero_()
            t.weight[:, :d].copy_(s.weight)
            t.bias.copy_(s.bias)
        dst.score.weight.copy_(src.score.weight.mean(0, keepdim=True))
        dst.score.bias.copy_(src.score.bias.mean(0, keepdim=True))


@torch.no_grad()
def scale_actor_logits(policy: PatchPolicy, obs: dict[str, Tensor], target_std: float = 2.0) -> float:
    """Rescale the actor's score layer so the logits of ``obs``'s valid patches have std ``target_std``.

    HAFED's raw attention logits vary little across a thousand patches, so the warm-started
    categorical policy samples almost uniformly (entropy ~ log N) although its greedy action is
    sensible. Multiplying the score layer (weight and bias) by ``c`` is a softmax temperature ``1/c``:
    it keeps the greedy policy and makes the sampled one concentrate on the top-scored patches.
    Returns ``c``.
    """
    extractor: PatchActorCritic = policy.mlp_extractor
    logits = extractor.forward_actor(policy.extract_features(obs))
    valid = obs["patch_mask"].reshape(logits.shape).bool()
    stds = [row[m].std() for row, m in zip(logits, valid, strict=True) if int(m.sum()) > 1]
    std = float(torch.stack(stds).mean()) if stds else 0.0
    scale = target_std / std if std > 1e-8 else 1.0
    extractor.actor.score.weight.mul_(scale)
    extractor.actor.score.bias.mul_(scale)
    return scale
