r"""ABMIL: gated attention MIL (Ilse et al., ICML 2018), multi-class head.

.. math::
    h_i = \mathrm{ReLU}(W x_i), \quad a = \operatorname{softmax}_i\big(w^\top(\tanh(V h_i) \odot \sigma(U h_i))\big),
    \quad \hat y = \mathrm{Linear}\Big(\sum_i a_i h_i\Big)

Defaults follow the ACMIL/ASMIL repositories' ``ACMIL_GA`` with one token for ViT-S/16 features
(projection 384 -> 128, attention hidden 128, gated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from zoo.models.base import MILConfig, MILModel, check_batched
from zoo.nn import GatedAttention, attention_pool, masked_softmax


@dataclass
class ABMILConfig(MILConfig):
    """Args:
    hidden: width of the instance projection.
    attn_dim: hidden width of the attention gates.
    gated: gated (True) or plain tanh attention.
    dropout: dropout after the projection and in the attention.
    view: which features it reads: ``"lr"`` (low-res patches) or ``"hr"`` (all high-res children).
    """

    hidden: int = 128
    attn_dim: int = 128
    gated: bool = True
    dropout: float = 0.0
    view: str = "lr"


class ABMIL(MILModel):
    """Gated-attention MIL.

    Shapes: ``features (B, N, d)``, ``mask (B, N)`` -> ``logits (B, C)``, ``attention (B, N)``,
    ``embedding (B, hidden)``.
    """

    family: ClassVar[str] = "abmil"
    config_class = ABMILConfig

    def __init__(self, config: ABMILConfig) -> None:
        super().__init__(config)
        if config.view not in ("lr", "hr"):
            raise ValueError(f"ABMILConfig.view must be 'lr' or 'hr', got {config.view!r}")
        self.projection = nn.Sequential(
            nn.Linear(config.in_dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.attention = GatedAttention(config.hidden, config.attn_dim, 1, config.gated, config.dropout)
        self.classifier = nn.Linear(config.hidden, config.num_classes)

    def forward(
        self, features: Tensor, mask: Tensor | None = None, coords: Tensor | None = None
    ) -> dict[str, Tensor]:
        check_batched(features, type(self).__name__, "(B, N, D)")
        h = self.projection(features)
        weights = masked_softmax(self.attention(h), None if mask is None else mask[:, None, :])  # (B, 1, N)
        embedding = attention_pool(weights, h)[:, 0]
        out = {"logits": self.classifier(embedding), "attention": weights[:, 0], "embedding": embedding}
        return out
