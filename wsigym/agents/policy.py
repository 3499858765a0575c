r"""A permutation-equivariant actor-critic for ``WSIZoom`` with sb3-contrib's ``MaskablePPO``.

Each padded patch row becomes a token :math:`x_i = [s_i, \text{visited}_i, \text{updated}_i,
\text{coords}_i, \text{budget}, \text{valid}_i] \in \mathbb{R}^{d+6}`.

- **Actor** (SASHA's): a gated-attention scorer shared over patches,
  :math:`\ell_i = w^\top(\tanh(V x_i) \odot \sigma(U x_i))`, used directly as the categorical logits
  over patches, so the policy is defined for any number of patches and equivariant to their order.
  Invalid and already-zoomed patches are removed by MaskablePPO's action masks (the same masks in
  rollout and in the update, unlike SASHA's public code).
- **Critic**: gated-attention pooling over the valid patches, then an MLP to one value.

SB3 needs a flat feature vector, so :class:`PatchTokens` flattens the tokens to ``(B, P*(d+6))`` and
:class:`PatchActorCritic` reshapes them back. ``action_net`` is an identity: the actor's latent *is*
the vector of per-patch logits (``latent_dim_pi = P``).

:func:`warm_start_from_hafed` optionally copies HAFED's level-2 attention into the actor, so the
initial greedy policy is "zoom where the frozen classifier attends" and PPO improves from there.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from zoo.nn import GatedAttention, attention_pool, masked_softmax

EXTRA_CHANNELS = 6  # visited, updated, x, y, budget, valid


def _patches_and_dim(observation_space: spaces.Dict) -> tuple[int, int]:
    p = int(observation_space["patch_mask"].shape[0])
    return p, int(
        observation_space["state"].shape[-1]
        if len(observation_space["state"].shape) == 2
        else observation_space["state"].shape[0] // p
    )


class PatchTokens(BaseFeaturesExtractor):
    """Observation dict -> flattened per-patch tokens ``(B, P*(d+6))``.

    Accepts the state either as ``(P, d)`` or flattened ``(P*d,)``.
    """

    def __init__(self, observation_space: spaces.Dict) -> None:
        p, d = _patches_and_dim(observation_space)
        super().__init__(observation_space, features_dim=p * (d + EXTRA_CHANNELS))
        self.num_patches, self.dim = p, d

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        b = obs["patch_mask"].shape[0]
        state = obs["state"].reshape(b, self.num_patches, self.dim)
        budget = obs["budget"].reshape(b, 1, 1).expand(b, self.num_patches, 1)
        tokens = torch.cat(
            [
                state,
                obs["visited"].float().reshape(b, self.num_patches, 1),
                obs["updated"].float().reshape(b, self.num_patches, 1),
                obs["coords"].reshape(b, self.num_patches, 2),
                budget,
                obs["patch_mask"].float().reshape(b, self.num_patches, 1),
            ],
            dim=-1,
        )
        return tokens.flatten(1)


class PatchActorCritic(nn.Module):
    """SB3 ``mlp_extractor``: per-patch actor logits and an attention-pooled critic latent.

    Args:
        num_patches: P (padded patch count of the observation).
        token_dim: d + 6.
        hidden: width of the gated attention (SASHA: 128).
        critic_hidden: width of the critic's latent.

    Shapes: ``forward(features (B, P*(d+6)))`` -> ``(logits (B, P), latent_vf (B, critic_hidden))``.
    """

    def __init__(self, num_patches: int, token_dim: int, hidden: int = 128, critic_hidden: int = 64) -> None:
        super().__init__()
        self.num_patches, self.token_dim = num_patches, token_dim
        self.latent_dim_pi = num_patches
        self.latent_dim_vf = critic_hidden
        self.actor = GatedAttention(token_dim, hidden, branches=1)
        self.critic_attention = GatedAttention(token_dim, hidden, branches=1)
        self.critic_mlp = nn.Sequential(nn.Linear(token_dim, critic_hidden), nn.Tanh())

    def _tokens(self, features: Tensor) -> tuple[Tensor, Tensor]:
        tokens = features.reshape(features.shape[0], self.num_patches, self.token_dim)
        return tokens, tokens[..., -1] > 0.5

    def forward_actor(self, features: Tensor) -> Tensor:
        tokens, _ = self._tokens(features)
        return self.actor(tokens)[:, 0]

    def forward_critic(self, features: Tensor) -> Tensor:
        tokens, valid = self._tokens(features)
        weights = masked_softmax(self.critic_attention(tokens), valid[:, None, :])
        return self.critic_mlp(attention_pool(weights, tokens)[:, 0])

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_actor(features), self.forward_critic(features)


class PatchPolicy(MaskableMultiInputActorCriticPolicy):
    """MaskablePPO policy for ``WSIZoom`` observations (see the module docstring).

    Extra keyword arguments: ``hidden`` (actor/critic attention width, default 128) and
    ``critic_hidden`` (default 64).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Any,
        hidden: int = 128,
        critic_hidden: int = 64,
        **kwargs: Any,
    ) -> None:
        self.hidden, self.critic_hidden = hidden, critic_hidden
        kwargs.setdefault("features_extractor_class", PatchTokens)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        p, d = _patches_and_dim(self.observation_space)
        self.mlp_extractor = PatchActorCritic(p, d + EXTRA_CHANNELS, self.hidden, self.critic_hidden)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()  # the actor's latent already is one logit per patch
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(hidden=self.hidden, critic_hidden=self.critic_hidden)
        return data


@torch.no_grad()
def warm_start_from_hafed(policy: PatchPolicy, hafed: nn.Module) -> None:
    """Initialise the actor with HAFED's level-2 gated attention (branch-averaged score).

    The actor then scores a patch as the mean over HAFED's branches of its raw attention logit on
    the state row (the extra channels start with zero weight), i.e. the greedy policy starts as
    "zoom the most attended unvisited patch". Needs ``hafed.level2_attention`` to be a
    :class:`zoo.nn.GatedAttention` over the state width with hidden width ``policy.hidden``.
    """
    src: GatedAttention = hafed.level2_attention
    dst: GatedAttention = policy.mlp_extractor.actor
    d = src.tanh_branch.in_features
    if src.tanh_branch.out_features != dst.tanh_branch.out_features:
        raise ValueError(
            f"warm start needs hidden={src.tanh_branch.out_features} (HAFED's attention width), "
            f"the policy has {dst.tanh_branch.out_features}"
        )
    for name in ("tanh_branch", "gate_branch"):
        s, t = getattr(src, name), getattr(dst, name)
        t.weight.zero_()
        t.weight[:, :d].copy_(s.weight)
        t.bias.copy_(s.bias)
    dst.score.weight.copy_(src.score.weight.mean(0, keepdim=True))
    dst.score.bias.copy_(src.score.bias.mean(0, keepdim=True))
