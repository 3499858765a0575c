r"""SemaMIL: semantic reordering + a query-conditioned selective state-space model (reconstruction).

**This is a reconstruction.** The SemaMIL paper (Gan et al., arXiv 2509.00442) describes its two
parts only in the abstract: *Semantic Reordering* (cluster similar patches, order them by a reversible
permutation) and *SRSM* (a representative query subset adjusts the SSM parameters). The clustering
method, cluster count and order, subset size and rule, which of Δ/B/C is modulated, widths, and the
training recipe are not published. Every such choice below is a :class:`SemaMILConfig` field.

Forward pass on ``features (B, N, d)`` with ``mask (B, N)``:

1. Projection :math:`h_i = \mathrm{GELU}(W x_i)` (``hidden`` wide, MambaMIL style).
2. Semantic reordering (no gradient): k-means on :math:`h` per slide (farthest-point init from
   the patch nearest the mean, ``kmeans_iters`` Lloyd steps, so no random numbers and the result is
   permutation-equivariant up to exact ties); permutation ``perm`` = stable sort by
   (cluster rank, distance to the centroid); padding goes last. ``inv_perm`` restores slide order.
3. SRSM context: ``query_rule="topk"`` takes the ``n_queries`` patches with the highest learned score
   :math:`s_i = w^\top h_i` and pools them with ``softmax(s)`` over that subset; ``"centroids"``
   averages the cluster centroids (with gradient through :math:`h`). The context :math:`c` gives,
   per layer, additive shifts of the pre-softplus step size Δ (``Linear(hidden, d_inner)``) and/or of
   B and C (``Linear(hidden, d_state)`` each), chosen by ``condition_on``. These linears start at zero,
   so an untrained SemaMIL is a plain (Bi)Mamba MIL.
4. ``n_layers`` × [x + Mamba(LN x) (+ reversed-direction Mamba when ``bidirectional``)], LayerNorm.
5. Tokens go back to slide order; gated attention pooling -> ``Linear(hidden, C)``.

Right-padding never reaches a valid token: valid tokens are a prefix of the sorted sequence, the
forward scan is causal, and the reverse direction reverses only the valid prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import MILConfig, MILModel, check_batched
from zoo.nn import GatedAttention, attention_pool, masked_softmax
from zoo.nn.mamba import MambaBlock

CONDITION_MODES = ("delta", "bc", "delta_bc", "none")
QUERY_RULES = ("topk", "centroids")
CLUSTER_ORDERS = ("init", "size")


@dataclass
class SemaMILConfig(MILConfig):
    """Args (all reconstruction choices; none are published):
    hidden: width of the projection and the SSM stream (MambaMIL uses 512; 128 keeps CPU training cheap).
    n_layers: Mamba layers.
    d_state, d_conv, expand: Mamba-1 sizes (mamba_ssm defaults).
    bidirectional: add a reverse-direction Mamba per layer (BiMamba style), outputs summed.
    reorder: apply semantic reordering (False scans in slide order: the ablation).
    n_clusters: k-means clusters (capped by the number of valid patches).
    kmeans_iters: Lloyd iterations after farthest-point initialisation.
    cluster_order: order of clusters in the sequence: ``"init"`` (farthest-point order) or ``"size"``
        (largest first, ties by init order).
    query_rule: SRSM subset: ``"topk"`` (learned score) or ``"centroids"``.
    n_queries: subset size for ``"topk"`` (capped by the valid patches).
    condition_on: which SSM parameters the context shifts: ``"delta"``, ``"bc"``, ``"delta_bc"``, ``"none"``.
    attn_dim: hidden width of the gated-attention head.
    dropout: dropout after the projection and in the head.
    scan_backend: selective-scan backend (``"auto"``, ``"parallel"``, ``"reference"``, ``"mamba_ssm"``).
    view: ``"lr"`` (low-res patches) or ``"hr"`` (every valid high-res child is an instance).
    """

    hidden: int = 128
    n_layers: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    bidirectional: bool = True
    reorder: bool = True
    n_clusters: int = 8
    kmeans_iters: int = 5
    cluster_order: str = "init"
    query_rule: str = "topk"
    n_queries: int = 8
    condition_on: str = "delta_bc"
    attn_dim: int = 128
    dropout: float = 0.0
    scan_backend: str = "auto"
    view: str = "lr"


def _sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """Squared distances ``x (B, N, e)``, ``c (B, K, e)`` -> ``(B, N, K)``."""
    return (x.pow(2).sum(-1, keepdim=True) - 2 * x @ c.transpose(1, 2) + c.pow(2).sum(-1)[:, None]).clamp_min(
        0
    )


@torch.no_grad()
def kmeans(x: Tensor, mask: Tensor, n_clusters: int, iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """Deterministic masked k-means per bag.

    Init: farthest-point sampling starting from the valid point nearest the bag mean; then ``iters``
    Lloyd steps (empty clusters keep their centre). When a bag has fewer valid points than clusters,
    the surplus centres repeat points and stay empty or tie (ties go to the lowest cluster index).

    Args:
        x: ``(B, N, e)`` points; mask: ``(B, N)`` valid points.

    Returns:
        ``assign (B, N)`` cluster index (``n_clusters`` for padding), ``dist (B, N)`` squared distance
        to the own centre (0 for padding), ``centres (B, K, e)``.
    """
    b, n, _ = x.shape
    k = n_clusters
    x = x.float()
    m = mask.float()
    mean = (x * m[..., None]).sum(1) / m.sum(1).clamp_min(1)[:, None]  # (B, e)
    d0 = (x - mean[:, None]).pow(2).sum(-1).masked_fill(~mask, float("inf"))
    idx = [d0.argmin(1)]
    min_d = torch.full((b, n), float("inf"), device=x.device)
    for _ in range(1, k):
        last = x.gather(1, idx[-1][:, None, None].expand(-1, 1, x.shape[-1]))  # (B, 1, e)
        min_d = torch.minimum(min_d, (x - last).pow(2).sum(-1))
        idx.append(min_d.masked_fill(~mask, -1.0).argmax(1))
    centres = x.gather(1, torch.stack(idx, 1)[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, e)
    for _ in range(iters):
        assign = _sq_dist(x, centres).argmin(-1)  # (B, N)
        onehot = F.one_hot(assign, k).float() * m[..., None]  # (B, N, K)
        counts = onehot.sum(1)  # (B, K)
        sums = onehot.transpose(1, 2) @ x  # (B, K, e)
        centres = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centres)
    dist_all = _sq_dist(x, centres)
    dist, assign = dist_all.min(-1)
    assign = assign.masked_fill(~mask, k)
    dist = dist.masked_fill(~mask, 0.0)
    return assign, dist, centres


def semantic_order(
    assign: Tensor, dist: Tensor, mask: Tensor, n_clusters: int, cluster_order: str = "init"
) -> Tensor:
    """Permutation ``perm (B, N)`` sorting patches by (cluster rank, distance to centre); padding last.

    ``sorted = x.gather(1, perm)``; the inverse is ``perm.argsort(1)``.
    """
    rank = assign
    if cluster_order == "size":
        counts = F.one_hot(assign, n_clusters + 1)[..., :n_clusters].sum(1)  # (B, K)
        # larger clusters first; stable sort keeps init order among equal sizes
        order = torch.sort(-counts, dim=1, stable=True).indices  # (B, K) cluster ids by rank
        rank_of = order.argsort(1)  # cluster id -> rank
        rank = torch.where(
            mask, rank_of.gather(1, assign.clamp_max(n_clusters - 1)), torch.full_like(assign, n_clusters)
        )
    elif cluster_order != "init":
        raise ValueError(f"cluster_order must be one of {CLUSTER_ORDERS}, got {cluster_order!r}")
    by_dist = torch.sort(dist, dim=1, stable=True).indices
    by_rank = torch.sort(rank.gather(1, by_dist), dim=1, stable=True).indices
    return by_dist.gather(1, by_rank)


def _reverse_valid_prefix(lengths: Tensor, n: int) -> Tensor:
    """Index ``(B, N)`` reversing the first ``lengths[b]`` positions and fixing the rest."""
    pos = torch.arange(n, device=lengths.device)[None]
    return torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)


class _SemaLayer(nn.Module):
    def __init__(self, config: SemaMILConfig) -> None:
        super().__init__()
        c = config
        kw = dict(d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, backend=c.scan_backend)
        self.norm = nn.LayerNorm(c.hidden)
        self.mixer = MambaBlock(c.hidden, **kw)
        self.mixer_reverse = MambaBlock(c.hidden, **kw) if c.bidirectional else None
        d_inner = self.mixer.d_inner
        directions = 2 if c.bidirectional else 1
        self.delta_cond = (
            nn.Linear(c.hidden, directions * d_inner) if c.condition_on in ("delta", "delta_bc") else None
        )
        self.bc_cond = (
            nn.Linear(c.hidden, directions * 2 * c.d_state) if c.condition_on in ("bc", "delta_bc") else None
        )
        for lin in (self.delta_cond, self.bc_cond):
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def _shifts(self, context: Tensor, direction: int) -> dict[str, Tensor]:
        shifts: dict[str, Tensor] = {}
        if self.delta_cond is not None:
            shifts["delta_shift"] = self.delta_cond(context).chunk(self.n_dir, -1)[direction]
        if self.bc_cond is not None:
            b_shift, c_shift = self.bc_cond(context).chunk(self.n_dir, -1)[direction].chunk(2, -1)
            shifts["b_shift"], shifts["c_shift"] = b_shift, c_shift
        return shifts

    @property
    def n_dir(self) -> int:
        return 1 if self.mixer_reverse is None else 2

    def forward(self, x: Tensor, context: Tensor, reverse_index: Tensor | None) -> Tensor:
        h = self.norm(x)
        out = x + self.mixer(h, **self._shifts(context, 0))
        if self.mixer_reverse is not None:
            assert reverse_index is not None
            idx = reverse_index[..., None].expand_as(h)
            rev = self.mixer_reverse(h.gather(1, idx), **self._shifts(context, 1))
            out = out + rev.gather(1, idx)  # the index is its own inverse
        return out


class SemaMIL(MILModel):
    """SemaMIL (reconstruction; see the module docstring).

    Shapes: ``features (B, N, d)``, ``mask (B, N)`` -> ``logits (B, C)``,
    ``attention (B, N)`` (slide order), ``embedding (B, hidden)``, ``order (B, N)`` (the semantic
    permutation: position j of the scan holds patch ``order[j]``), ``clusters (B, N)``.
    """

    family: ClassVar[str] = "semamil"
    config_class = SemaMILConfig

    def __init__(self, config: SemaMILConfig) -> None:
        super().__init__(config)
        c = config
        if c.condition_on not in CONDITION_MODES:
            raise ValueError(
                f"SemaMILConfig.condition_on must be one of {CONDITION_MODES}, got {c.condition_on!r}"
            )
        if c.query_rule not in QUERY_RULES:
            raise ValueError(f"SemaMILConfig.query_rule must be one of {QUERY_RULES}, got {c.query_rule!r}")
        if c.cluster_order not in CLUSTER_ORDERS:
            raise ValueError(
                f"SemaMILConfig.cluster_order must be one of {CLUSTER_ORDERS}, got {c.cluster_order!r}"
            )
        if c.n_clusters < 1 or c.n_queries < 1:
            raise ValueError("SemaMILConfig.n_clusters and n_queries must be >= 1")
        self.projection = nn.Sequential(nn.Linear(c.in_dim, c.hidden), nn.GELU(), nn.Dropout(c.dropout))
        self.query_score = nn.Linear(c.hidden, 1)
        self.layers = nn.ModuleList(_SemaLayer(c) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.hidden)
        self.attention = GatedAttention(c.hidden, c.attn_dim, 1, True, c.dropout)
        self.classifier = nn.Linear(c.hidden, c.num_classes)

    def _context(self, h: Tensor, mask: Tensor, assign: Tensor) -> tuple[Tensor, Tensor]:
        """SRSM context ``(B, hidden)`` and the query weights ``(B, N)`` (0 outside the subset)."""
        c = self.config
        if c.query_rule == "centroids":
            k = c.n_clusters
            onehot = F.one_hot(assign, k + 1)[..., :k].to(h.dtype)  # (B, N, K); padding has no cluster
            counts = onehot.sum(1)  # (B, K)
            centroids = (onehot.transpose(1, 2) @ h) / counts.clamp_min(1)[..., None]
            used = (counts > 0).to(h.dtype)
            context = (centroids * used[..., None]).sum(1) / used.sum(1, keepdim=True).clamp_min(1)
            weights = (onehot / counts.clamp_min(1)[:, None]).sum(-1) / used.sum(1, keepdim=True).clamp_min(1)
            return context, weights
        scores = self.query_score(h)[..., 0].masked_fill(~mask, float("-inf"))  # (B, N)
        q = min(c.n_queries, h.shape[1])
        top = scores.topk(q, dim=1)
        w = torch.nan_to_num(torch.softmax(top.values, dim=1), nan=0.0)  # -inf (padding) -> 0
        context = (w[..., None] * h.gather(1, top.indices[..., None].expand(-1, -1, h.shape[-1]))).sum(1)
        weights = torch.zeros_like(scores).scatter(1, top.indices, w)
        return context, weights

    def forward(
        self, features: Tensor, mask: Tensor | None = None, coords: Tensor | None = None
    ) -> dict[str, Tensor]:
        check_batched(features, type(self).__name__, "(B, N, D)")
        b, n, _ = features.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=features.device)
        c = self.config
        h = self.projection(features)
        if c.reorder:
            assign, dist, _ = kmeans(h.detach(), mask, c.n_clusters, c.kmeans_iters)
            perm = semantic_order(assign, dist, mask, c.n_clusters, c.cluster_order)
        else:
            assign = torch.where(mask, 0, c.n_clusters)
            perm = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # padding last
        inv_perm = perm.argsort(1)
        context, query_weights = self._context(h, mask, assign)
        lengths = mask.sum(1)
        reverse_index = _reverse_valid_prefix(lengths, n) if c.bidirectional else None
        x = h.gather(1, perm[..., None].expand_as(h))
        for layer in self.layers:
            x = layer(x, context, reverse_index)
        x = self.norm(x).gather(1, inv_perm[..., None].expand_as(h))  # back to slide order
        weights = masked_softmax(self.attention(x), mask[:, None, :])  # (B, 1, N)
        embedding = attention_pool(weights, x)[:, 0]
        out = {
            "logits": self.classifier(embedding),
            "attention": weights[:, 0],
            "embedding": embedding,
            "order": perm,
            "clusters": assign,
            "query_weights": query_weights,
        }
        return out
