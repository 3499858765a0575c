r"""Attention-MIL blocks: gated attention scores, masked softmax, pooling, STKIM, diversity.

Gated attention (Ilse et al., 2018) scores each instance :math:`h_i \in \mathbb{R}^L` with

.. math:: a_{i,m} = w_m^\top \big(\tanh(V h_i) \odot \sigma(U h_i)\big) + b_m, \quad m = 1..K

for :math:`K` attention branches; the slide embedding of branch :math:`m` is
:math:`\sum_i \operatorname{softmax}_i(a_{\cdot,m})\, h_i`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NEG_INF = -1e9  # the masking value used by ACMIL/HAFED's STKIM; finite, so softmax stays defined


class GatedAttention(nn.Module):
    """Gated attention scorer with ``branches`` heads.

    Args:
        in_dim: instance feature width L.
        hidden: hidden width D of the tanh/sigmoid gates.
        branches: number of attention branches K.
        gated: use the sigmoid gate (False gives plain tanh attention).
        dropout: dropout on the gate activations.

    Shapes:
        ``forward(h)``: ``h (..., N, L)`` -> raw logits ``(..., K, N)`` (before softmax).
    """

    def __init__(
        self, in_dim: int, hidden: int = 128, branches: int = 1, gated: bool = True, dropout: float = 0.0
    ):
        super().__init__()
        self.tanh_branch = nn.Linear(in_dim, hidden)
        self.gate_branch = nn.Linear(in_dim, hidden) if gated else None
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden, branches)

    def forward(self, h: Tensor) -> Tensor:
        a = torch.tanh(self.tanh_branch(h))
        if self.gate_branch is not None:
            a = a * torch.sigmoid(self.gate_branch(h))
        return self.score(self.dropout(a)).transpose(-1, -2)


def masked_softmax(logits: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` that gives exactly 0 weight where ``mask`` is False.

    ``mask`` broadcasts against ``logits`` (True = valid). A row with no valid entry returns zeros.
    """
    if mask is None:
        return torch.softmax(logits, dim=dim)
    logits = logits.masked_fill(~mask, float("-inf"))
    out = torch.softmax(logits, dim=dim)
    return torch.nan_to_num(out, nan=0.0)


def attention_pool(weights: Tensor, h: Tensor) -> Tensor:
    """Weighted sum of instances: ``weights (..., K, N)``, ``h (..., N, L)`` -> ``(..., K, L)``."""
    return weights @ h


def stochastic_topk_mask(
    logits: Tensor,
    n_masked: int,
    drop: float,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """STKIM (ACMIL): hide a random part of each branch's most attended instances.

    Among the top ``n_masked`` logits of each branch, a random ``int(n_masked * drop)`` are set to
    :data:`NEG_INF`. Used in training only. ``logits (..., K, N)``; returns a new tensor.
    """
    n_drop = int(n_masked * drop)
    n = logits.shape[-1]
    if n_masked <= 0 or n_drop <= 0 or n <= n_masked:
        return logits
    scores = logits if mask is None else logits.masked_fill(~mask, float("-inf"))
    top = scores.topk(n_masked, dim=-1).indices  # (..., K, n_masked)
    noise = torch.rand(top.shape, device=logits.device, generator=generator)
    pick = noise.argsort(dim=-1)[..., :n_drop]
    dropped = top.gather(-1, pick)
    return logits.scatter(-1, dropped, NEG_INF)


def diversity_loss(attention: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean pairwise cosine similarity between branch attention maps (ACMIL's L_div).

    ``attention (..., K, N)`` softmax weights; 0 when K = 1.
    """
    k = attention.shape[-2]
    if k < 2:
        return attention.new_zeros(())
    a = attention / (attention.norm(dim=-1, keepdim=True) + eps)
    sim = a @ a.transpose(-1, -2)  # (..., K, K)
    off = sim.sum(dim=(-1, -2)) - sim.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (off / (k * (k - 1))).mean()


def sigmax(logits: Tensor, mask: Tensor | None = None, dim: int = -1, eps: float = 1e-8) -> Tensor:
    r"""Normalised sigmoid (ASMIL's anchor): :math:`\tilde\sigma(x)_i = \sigma(x_i) / (\sum_j \sigma(x_j) + \epsilon)`.

    Unlike softmax it is not shift-invariant and saturates instead of sharpening. ``mask`` broadcasts
    against ``logits`` (True = valid); invalid entries get exactly 0 and are left out of the sum.
    """
    s = torch.sigmoid(logits)
    if mask is not None:
        s = s * mask
    return s / (s.sum(dim=dim, keepdim=True) + eps)
