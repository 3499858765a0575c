r"""TransMIL (Shao et al., NeurIPS 2021): Nyström transformer with a pyramid position encoding.

Per slide with :math:`N` instances:

1. :math:`h_i = \mathrm{ReLU}(W x_i)` (``in_dim -> dim``);
2. square layout: :math:`s = \lceil\sqrt N\rceil`, the sequence is extended to :math:`s^2` tokens by
   repeating its first :math:`s^2 - N` tokens (as the reference does), and a learned CLS token is
   prepended;
3. ``x = x + NystromAttention(LN(x))`` -> PPEG -> ``x = x + NystromAttention(LN(x))``, where PPEG
   reshapes the :math:`s^2` instance tokens to an :math:`s\times s` grid and adds depthwise convolutions
   with kernels 7, 5, 3 to the identity;
4. logits = ``Linear(LN(x)[CLS])``.

Instances are laid out in input order (the reference ignores coordinates; so does this port).

**Attention output.** ``attention (B, N)`` is the CLS token's attention row in the last layer,
averaged over heads (Nyström-approximate when the sequence is longer than ``num_landmarks``).
It is mapped back to input order by dropping the CLS-to-CLS weight, adding the weight of every
repeated square-padding token onto the instance it copies, clipping the (rare, approximation-induced)
negative values to 0 and renormalising to sum 1.

**Batches.** The square layout and PPEG depend on each slide's own :math:`N`, so a padded batch is
processed slide by slide on its valid instances: padding never changes a slide's output.
Defaults are the reference's (dim 512, 8 heads of 64, 256 landmarks, 6 pseudo-inverse iterations,
residual value convolution 33, dropout 0.1); it runs on any device (no hard-coded CUDA calls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from zoo.models.base import MILConfig, MILModel, check_batched
from zoo.nn.nystrom import NystromAttention


@dataclass
class TransMILConfig(MILConfig):
    """Args:
    dim: token width after the input projection.
    heads: attention heads (``dim_head = dim // heads``).
    num_landmarks: Nyström landmarks (at most).
    pinv_iterations: pseudo-inverse iterations.
    residual_kernel: kernel of the value convolution inside attention.
    dropout: dropout after each attention's output projection.
    view: ``"lr"`` (low-res patches) or ``"hr"`` (every valid high-res child is an instance).
    """

    dim: int = 512
    heads: int = 8
    num_landmarks: int = 256
    pinv_iterations: int = 6
    residual_kernel: int = 33
    dropout: float = 0.1
    view: str = "lr"


class PPEG(nn.Module):
    """Pyramid position encoding generator: ``x + DW7(x) + DW5(x) + DW3(x)`` on the token grid.

    Shapes: ``forward(x (B, 1 + s*s, dim), s)`` -> same shape; token 0 (CLS) passes through.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: Tensor, side: int) -> Tensor:
        b, _, c = x.shape
        cls, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(b, c, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class TransLayer(nn.Module):
    """Pre-norm residual Nyström attention: ``x + attn(LN(x))`` (no feed-forward, as TransMIL)."""

    def __init__(self, config: TransMILConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.dim)
        self.attention = NystromAttention(
            config.dim,
            heads=config.heads,
            dim_head=config.dim // config.heads,
            num_landmarks=config.num_landmarks,
            pinv_iterations=config.pinv_iterations,
            residual_kernel=config.residual_kernel,
            dropout=config.dropout,
        )

    def forward(self, x: Tensor, return_cls_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        out, row = self.attention(self.norm(x), return_attention_row=0 if return_cls_attention else None)
        return x + out, row


class TransMIL(MILModel):
    """TransMIL on low-res instance features.

    Shapes: ``features (B, N, d)``, ``mask (B, N)`` -> ``logits (B, C)``,
    ``attention (B, N)`` (see the module docstring; 0 on padding), ``embedding (B, dim)`` (normalised CLS).
    """

    family: ClassVar[str] = "transmil"
    config_class = TransMILConfig

    def __init__(self, config: TransMILConfig) -> None:
        super().__init__(config)
        if config.dim % config.heads:
            raise ValueError(f"TransMILConfig.dim ({config.dim}) must be divisible by heads ({config.heads})")
        self.projection = nn.Sequential(nn.Linear(config.in_dim, config.dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.dim))
        self.layer1 = TransLayer(config)
        self.ppeg = PPEG(config.dim)
        self.layer2 = TransLayer(config)
        self.norm = nn.LayerNorm(config.dim)
        self.classifier = nn.Linear(config.dim, config.num_classes)

    def _forward_slide(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One slide ``x (n, d)`` -> logits ``(C,)``, attention ``(n,)``, embedding ``(dim,)``."""
        n = x.shape[0]
        h = self.projection(x)
        side = math.ceil(math.sqrt(n))
        repeat = torch.arange(side * side - n, device=x.device) % n  # sources of the padding tokens
        tokens = torch.cat([self.cls_token[0], h, h[repeat]], dim=0)[None]  # (1, 1 + s², dim)
        tokens, _ = self.layer1(tokens)
        tokens = self.ppeg(tokens, side)
        tokens, row = self.layer2(tokens, return_cls_attention=True)
        embedding = self.norm(tokens)[0, 0]
        cls_to_tokens = row[0].mean(0)[1:]  # (s²,) heads averaged, CLS->CLS dropped
        attention = cls_to_tokens[:n].index_add(0, repeat, cls_to_tokens[n:]).clamp_min(0.0)
        attention = attention / attention.sum().clamp_min(1e-12)
        return self.classifier(embedding), attention, embedding

    def forward(
        self, features: Tensor, mask: Tensor | None = None, coords: Tensor | None = None
    ) -> dict[str, Tensor]:
        check_batched(features, type(self).__name__, "(B, N, D)")
        b, n_max, _ = features.shape
        logits, attention, embeddings = [], features.new_zeros(b, n_max), []
        for i in range(b):
            if mask is None:
                idx = None
                x = features[i]
            else:
                idx = mask[i].nonzero().squeeze(1)
                if idx.numel() == 0:
                    raise ValueError(f"TransMIL: slide {i} of the batch has no valid instance")
                x = features[i, idx]
            lg, att, emb = self._forward_slide(x)
            logits.append(lg)
            embeddings.append(emb)
            if idx is None:
                attention[i] = att
            else:
                attention[i, idx] = att
        out = {"logits": torch.stack(logits), "attention": attention, "embedding": torch.stack(embeddings)}
        return out
