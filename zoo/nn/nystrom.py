r"""Nyström self-attention (Xiong et al., AAAI 2021) in plain PyTorch, CPU-safe.

Softmax attention :math:`S = \operatorname{softmax}(QK^\top/\sqrt{d})` is approximated through
:math:`m` landmarks :math:`\tilde Q, \tilde K` (means of consecutive token segments):

.. math::
    \hat S = \underbrace{\operatorname{softmax}(Q\tilde K^\top)}_{F\ (n\times m)}\,
             \underbrace{\operatorname{softmax}(\tilde Q\tilde K^\top)^{+}}_{A^{+}\ (m\times m)}\,
             \underbrace{\operatorname{softmax}(\tilde Q K^\top)}_{B\ (m\times n)}, \qquad
    \text{out} = F\,(A^{+}(B V)) + \mathrm{DWConv}(V)

with :math:`A^{+}` from the iterative Moore-Penrose scheme of Razavi et al.
(:math:`Z \leftarrow \tfrac14 Z(13I - AZ(15I - AZ(7I - AZ)))`), cost :math:`O(nm)`. The depthwise
convolution over the sequence of values (kernel 33) is the residual of the Nyströmformer.

Segments: with :math:`n` tokens and at most ``num_landmarks`` :math:`m`, the segment length is
:math:`l = \lceil n/m \rceil` and the landmark count :math:`\lceil n/l \rceil \le m`; the sequence is
zero-padded at the front to a multiple of :math:`l`, and padded tokens are masked out of every
softmax and landmark mean, so no landmark is empty. When :math:`n \le m` every token is its own
landmark and :math:`\hat S = S A^{+} S = S`: exact softmax attention is computed directly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def iterative_pinv(a: Tensor, iterations: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse of each ``(..., m, m)`` matrix by Newton-Schulz-type iteration.

    Initialised with :math:`Z_0 = A^\\top / (\\|A\\|_1 \\|A\\|_\\infty)` per matrix, so results do not depend
    on what else is in the batch.
    """
    abs_a = a.abs()
    scale = abs_a.sum(-1).amax(-1) * abs_a.sum(-2).amax(-1)  # (...)
    z = a.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention over one unpadded sequence per batch row.

    Args:
        dim: token width.
        heads: attention heads.
        dim_head: width per head.
        num_landmarks: maximum number of landmarks m.
        pinv_iterations: iterations of :func:`iterative_pinv`.
        residual_kernel: kernel of the depthwise value convolution (0 disables it).
        dropout: dropout after the output projection.

    Shapes: ``forward(x (B, n, dim))`` -> ``(B, n, dim)``; with ``return_attention_row=i`` also the
    (approximate) attention of query token ``i`` to every token ``(B, heads, n)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        self.heads, self.dim_head = heads, dim_head
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self.residual = (
            nn.Conv2d(
                heads,
                heads,
                (residual_kernel, 1),
                padding=(residual_kernel // 2, 0),
                groups=heads,
                bias=False,
            )
            if residual_kernel > 0
            else None
        )

    def forward(self, x: Tensor, return_attention_row: int | None = None) -> tuple[Tensor, Tensor | None]:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q = q * self.scale  # (B, h, n, dh) each
        row = None
        if n <= self.num_landmarks:
            attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (B, h, n, n)
            out = attn @ v
            if return_attention_row is not None:
                row = attn[..., return_attention_row, :]
        else:
            seg = math.ceil(n / self.num_landmarks)
            m = math.ceil(n / seg)
            pad = m * seg - n
            valid = torch.ones(n + pad, dtype=torch.bool, device=x.device)
            valid[:pad] = False
            if pad:
                q, k, v = (nn.functional.pad(t, (0, 0, pad, 0)) for t in (q, k, v))
            counts = valid.view(m, seg).sum(-1).to(q.dtype)[:, None]  # (m, 1), all >= 1
            q_land = q.reshape(b, self.heads, m, seg, self.dim_head).sum(-2) / counts
            k_land = k.reshape(b, self.heads, m, seg, self.dim_head).sum(-2) / counts
            f = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)  # (B, h, n', m)
            a = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)  # (B, h, m, m)
            scores = (q_land @ k.transpose(-1, -2)).masked_fill(~valid, float("-inf"))
            bmat = torch.softmax(scores, dim=-1)  # (B, h, m, n')
            a_inv = iterative_pinv(a, self.pinv_iterations)
            out = (f @ a_inv) @ (bmat @ v)
            if return_attention_row is not None:
                row = ((f[..., pad + return_attention_row, None, :] @ a_inv) @ bmat)[..., 0, pad:]
            q, k, v, out = q[:, :, pad:], k[:, :, pad:], v[:, :, pad:], out[:, :, pad:]
        if self.residual is not None:
            out = out + self.residual(v)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out), row
