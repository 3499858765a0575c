r"""ACMIL: attention-challenging MIL (Zhang et al., ECCV 2024), multi-class, maskable.

With instance features :math:`x_i \in \mathbb{R}^d` and :math:`K` attention branches:

.. math::
    h_i = \mathrm{ReLU}(W x_i) \ (W \in \mathbb{R}^{L \times d},\ \text{no bias}), \qquad
    a_{m,i} = w_m^\top\big(\tanh(V h_i) \odot \sigma(U h_i)\big) + b_m

In training, STKIM (:func:`zoo.nn.attention.stochastic_topk_mask`) hides a random
``int(n_masked_patch * mask_drop)`` of each branch's top ``n_masked_patch`` logits. Then

.. math::
    A_{m} = \operatorname{softmax}_i(a_{m,\cdot}), \quad \hat y_m = C_m\Big(\sum_i A_{m,i} h_i\Big), \quad
    \bar A = \tfrac1K \sum_m A_m, \quad \hat y = C\Big(\sum_i \bar A_i h_i\Big)

and the loss is :math:`\mathrm{CE}(\hat y, y) + \tfrac1K\sum_m \mathrm{CE}(\hat y_m, y) + L_{div}` (the branch
term only when :math:`K > 1`), :math:`L_{div}` the mean pairwise cosine similarity of the :math:`A_m`.
The branch CE is averaged over branches (the reference computes one CE over the K stacked branch
predictions, which is the same mean).

Defaults: the ACMIL README's ACMIL run for 384-d ViT-S/16 features (``n_token 5, n_masked_patch 10,
mask_drop 0.6``, projection to 128, attention hidden 128). ``n_token 1, n_masked_patch 0`` gives the
repository's gated ABMIL baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import MILConfig, MILModel, check_batched
from zoo.nn.attention import (
    GatedAttention,
    attention_pool,
    diversity_loss,
    masked_softmax,
    stochastic_topk_mask,
)


@dataclass
class ACMILConfig(MILConfig):
    """Args:
    hidden: width L of the bias-free instance projection (``D_inner``).
    attn_dim: hidden width of the gated attention.
    n_token: number of attention branches K.
    n_masked_patch: STKIM's top-k per branch (0 disables STKIM).
    mask_drop: fraction of the top-k that STKIM hides.
    dropout: dropout on the attention gates.
    view: ``"lr"`` (low-res patches) or ``"hr"`` (every valid high-res child is an instance).
    """

    hidden: int = 128
    attn_dim: int = 128
    n_token: int = 5
    n_masked_patch: int = 10
    mask_drop: float = 0.6
    dropout: float = 0.0
    view: str = "lr"


class ACMIL(MILModel):
    """Multi-branch gated attention with STKIM and a diversity loss.

    Shapes: ``features (B, N, d)``, ``mask (B, N)`` (True = valid) ->

    - ``logits (B, C)``: slide head on the branch-averaged attention;
    - ``attention (B, N)``: branch-averaged attention :math:`\\bar A` (0 on padding);
    - ``branch_attention (B, K, N)``: per-branch softmax weights :math:`A_m`;
    - ``attention_logits (B, K, N)``: branch logits after STKIM;
    - ``branch_logits (B, K, C)``: per-branch predictions; ``embedding (B, L)``.
    """

    family: ClassVar[str] = "acmil"
    config_class = ACMILConfig

    def __init__(self, config: ACMILConfig) -> None:
        super().__init__(config)
        if config.n_token < 1:
            raise ValueError(f"ACMILConfig.n_token must be >= 1, got {config.n_token}")
        if not 0.0 <= config.mask_drop <= 1.0:
            raise ValueError(f"ACMILConfig.mask_drop must be in [0, 1], got {config.mask_drop}")
        self.projection = nn.Sequential(nn.Linear(config.in_dim, config.hidden, bias=False), nn.ReLU())
        self.attention = GatedAttention(config.hidden, config.attn_dim, config.n_token, True, config.dropout)
        self.branch_classifiers = nn.ModuleList(
            nn.Linear(config.hidden, config.num_classes) for _ in range(config.n_token)
        )
        self.classifier = nn.Linear(config.hidden, config.num_classes)

    def forward(
        self, features: Tensor, mask: Tensor | None = None, coords: Tensor | None = None
    ) -> dict[str, Tensor]:
        check_batched(features, type(self).__name__, "(B, N, D)")
        cfg: ACMILConfig = self.config
        h = self.projection(features)  # (B, N, L)
        logits = self.attention(h)  # (B, K, N)
        valid = None if mask is None else mask[:, None, :]
        if self.training and cfg.n_masked_patch > 0:
            logits = stochastic_topk_mask(logits, cfg.n_masked_patch, cfg.mask_drop, valid)
        weights = masked_softmax(logits, valid)  # (B, K, N)
        branch_embeddings = attention_pool(weights, h)  # (B, K, L)
        branch_logits = torch.stack(
            [head(branch_embeddings[:, m]) for m, head in enumerate(self.branch_classifiers)], dim=1
        )
        slide_attention = weights.mean(dim=1)  # (B, N)
        embedding = attention_pool(slide_attention[:, None, :], h)[:, 0]
        out = {
            "logits": self.classifier(embedding),
            "attention": slide_attention,
            "branch_attention": weights,
            "attention_logits": logits,
            "branch_logits": branch_logits,
            "embedding": embedding,
        }
        return out

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``loss = ce + branch_ce + diversity`` (``branch_ce`` and ``diversity`` are 0 for K = 1)."""
        out = self.predict(batch)
        label = batch["label"]
        ce = F.cross_entropy(out["logits"], label)
        k = self.config.n_token
        if k > 1:
            branch_logits = out["branch_logits"]
            branch_ce = F.cross_entropy(branch_logits.flatten(0, 1), label.repeat_interleave(k))
            diversity = diversity_loss(out["branch_attention"])
        else:
            branch_ce = diversity = ce.new_zeros(())
        total = ce + branch_ce + diversity
        return {
            "loss": total,
            "ce": ce,
            "branch_ce": branch_ce,
            "diversity": diversity,
            "logits": out["logits"].detach(),
        }
