r"""Multi-head cross-attention of a few queries over a large bag, in O(N) memory per query head.

Query :math:`t` (of :math:`T`) uses its own projections :math:`W_q^t, W_k^t, W_v^t, W_o^t` (or all queries
share one set). For head :math:`h` with width :math:`d_h` and instances :math:`x_i`:

.. math::
    s_{t,h,i} = \frac{(W_q^t q_t + b_q^t)_h \cdot (W_k^t x_i + b_k^t)_h}{\sqrt{d_h}}, \quad
    w_{t,h,\cdot} = \operatorname{softmax}_i(s_{t,h,\cdot}), \quad
    o_{t,h} = \sum_i w_{t,h,i}\,(W_v^t x_i + b_v^t)_h

Keys and values are never formed per instance: :math:`s_{t,h,i} = x_i \cdot u_{t,h} + c_{t,h}` with
:math:`u_{t,h} = (W_k^t)_h^\top (W_q^t q_t + b_q^t)_h` and, since the weights sum to 1,
:math:`o_{t,h} = (W_v^t)_h (\sum_i w_{t,h,i} x_i) + (b_v^t)_h`. Memory is :math:`O(T\,H\,N)` instead of
:math:`O(T\,N\,d)`, which matters for 100k-instance bags; the result is the same as the textbook form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zoo.nn.attention import masked_softmax


class QueryCrossAttention(nn.Module):
    """``n_queries`` queries cross-attending over instances, each with its own projections.

    Args:
        dim: width of queries and instances (also the attention width; ``dim_head = dim // heads``).
        heads: attention heads H.
        n_queries: number of queries T that get their own projection set (1 = shared by all queries).
        dropout: dropout on the output projection.

    Shapes: ``forward(queries (B, T, dim), x (B, N, dim), mask (B, N) | None)`` ->
    ``out (B, T, dim)``, raw ``scores (B, H, T, N)``, ``weights (B, H, T, N)`` (0 on masked instances).
    """

    def __init__(self, dim: int, heads: int = 8, n_queries: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"QueryCrossAttention: dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.n_sets = dim, heads, n_queries
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default initialisation range
        for name in ("q", "k", "v", "o"):
            self.register_parameter(
                f"w_{name}", nn.Parameter(torch.empty(n_queries, dim, dim).uniform_(-bound, bound))
            )
            self.register_parameter(
                f"b_{name}", nn.Parameter(torch.empty(n_queries, dim).uniform_(-bound, bound))
            )
        self.dropout = nn.Dropout(dropout)

    def _sets(self, t: int) -> tuple[Tensor, ...]:
        params = (self.w_q, self.b_q, self.w_k, self.b_k, self.w_v, self.b_v, self.w_o, self.b_o)
        if self.n_sets == t:
            return params
        if self.n_sets != 1:
            raise ValueError(f"QueryCrossAttention has {self.n_sets} projection sets but got {t} queries")
        return tuple(p.expand(t, *p.shape[1:]) for p in params)

    def forward(
        self, queries: Tensor, x: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, t, d = queries.shape
        h, dh = self.heads, d // self.heads
        w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o = self._sets(t)
        q = (torch.einsum("btd,tde->bte", queries, w_q) + b_q).view(b, t, h, dh)
        u = torch.einsum("tdhe,bthe->bthd", w_k.view(t, d, h, dh), q)  # (B, T, H, d)
        c = torch.einsum("the,bthe->bth", b_k.view(t, h, dh), q)  # (B, T, H)
        scores = (torch.einsum("bnd,bthd->bhtn", x, u) + c.permute(0, 2, 1)[..., None]) / math.sqrt(dh)
        weights = masked_softmax(scores, None if mask is None else mask[:, None, None, :])
        pooled = torch.einsum("bhtn,bnd->bthd", weights, x)  # (B, T, H, d)
        mass = weights.sum(-1).permute(0, 2, 1)[..., None]  # (B, T, H, 1): 1, or 0 for an empty bag
        values = torch.einsum("bthd,tdhe->bthe", pooled, w_v.view(t, d, h, dh)) + mass * b_v.view(t, h, dh)
        out = torch.einsum("btd,tde->bte", values.reshape(b, t, d), w_o) + b_o
        return self.dropout(out), scores, weights
