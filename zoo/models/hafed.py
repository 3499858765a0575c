r"""HAFED: hierarchical attention MIL over low-res patches and their high-res children (SASHA, NeurIPS 2025).

A slide is ``N`` low-res patches, each with ``k`` high-res children ``U (N, k, d)``. HAFED has two
gated-attention levels, both working directly on the encoder width ``d`` (no dimension reduction):

**Level 1 (aggregator)** turns the children of every patch into one high-res feature row:

.. math::
    a^{(1)}_{n,m,j} = \mathrm{GA}_1(u_{n,j})_m, \quad
    \alpha_{n,j} = \frac{1}{K_1}\sum_{m=1}^{K_1} \operatorname{softmax}_{j \in \text{valid}(n)} a^{(1)}_{n,m,j},
    \quad V_n = \sum_j \alpha_{n,j}\, u_{n,j}

with ``K_1 = n_token_1`` branches. ``V (N, d)`` is the "oracle" state row the environment reveals
when the agent zooms into patch ``n``.

**Level 2 (classifier)** reads a state ``S (N, d)``: the slide ``V`` itself during supervised
training, or the RL state (rows of ``Z``, ``V`` and TSU updates) when it is the reward model:

.. math::
    a_{m,i} = \mathrm{GA}_2(s_i)_m, \quad w_{m,i} = \operatorname{softmax}_{i \in \text{valid}} a_{m,i}, \quad
    \hat y_m = \mathrm{Head}_m\Big(\sum_i w_{m,i} s_i\Big), \quad
    \bar w_i = \frac{1}{M}\sum_m w_{m,i}, \quad \hat y = \mathrm{Head}\Big(\sum_i \bar w_i s_i\Big)

with ``M = n_token_2`` branches. :meth:`HAFED.classify` is this level alone.

**STKIM** (ACMIL's stochastic top-k instance masking), in training mode only: per branch, a random
``int(n_masked * mask_drop)`` of the ``n_masked`` highest logits are set to ``-1e9`` before the
softmax (``n_masked_1`` over the children at level 1, ``n_masked_2`` over the patches at level 2).
In eval mode both levels are deterministic.

**Loss**: ``CE(slide) + mean_m CE(branch m) (when M > 1) + div_1 + div_2``, where ``div`` is the mean
pairwise cosine similarity of the branch attention maps (:func:`zoo.nn.diversity_loss`; 0 for one
branch). All weights default to 1 as in SASHA.

**Level-2 diversity: intended term vs SASHA's code** (``div_2_rule``). The default ``"branches"`` is
the term SASHA describes and ACMIL defines: the mean pairwise cosine between the ``M`` branch
attention maps ``w_m (N,)``. SASHA's training script (``step3_WSI_classification_HAFED.py``) computes
``cosine_similarity(A_2[:, i], A_2[:, j])`` for ``i < j < M`` on the ``(M, N)`` attention, i.e. between
the *columns* of patches ``0..M-1`` (each an ``M``-vector of branch weights), not between branches:
it only touches the first ``M`` patches of the slide's patch order and does not make the branches
diverse, so in effect the official run trains without level-2 diversity. ``div_2_rule="sasha_code"``
reproduces that term (mean over the pairs of the first ``min(M, N)`` patches' branch-weight vectors;
in a padded batch a slide with ``N < M`` contributes zero vectors, whose cosine is 0). Level 1 is
computed as intended in both (SASHA's level-1 term is correct, and 0 with one branch).

Defaults are SASHA's CAMELYON16 configuration (``n_token_1=1, n_token_2=5, n_masked 10/20,
mask_drop=0.24``, gated attention hidden width 128 on ViT-S/16 features, d = 384).

Note on the TSU (:mod:`zoo.models.tsu`): the update network ``f_S`` is trained on inputs
``[V(a), Z(a), Z(i)]`` taken from the low-res features ``Z``; the environment's default (SASHA's)
anchors on the current state row ``S_t(a)`` (:mod:`wsigym.envs.state_update`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import MILConfig, MILModel, check_batched
from zoo.nn import GatedAttention, attention_pool, diversity_loss, masked_softmax, stochastic_topk_mask


@dataclass
class HAFEDConfig(MILConfig):
    """Args:
    attn_dim: hidden width of the tanh/sigmoid gates at both levels.
    n_token_1: attention branches ``K_1`` of the level-1 aggregator (over children).
    n_token_2: attention branches ``M`` of the level-2 classifier (over patches).
    n_masked_1: STKIM top-k pool over the children (level 1).
    n_masked_2: STKIM top-k pool over the patches (level 2).
    mask_drop: fraction of each STKIM pool hidden in training.
    dropout: dropout on the gate activations of both levels.
    ce_branch_weight: weight of the mean branch cross-entropy (used when ``n_token_2 > 1``).
    div_weight_1: weight of the level-1 diversity term.
    div_weight_2: weight of the level-2 diversity term.
    div_2_rule: ``"branches"`` (the intended ACMIL term, default) or ``"sasha_code"`` (the term SASHA's
        official training computes, between patches ``0..M-1``; module docstring).
    """

    attn_dim: int = 128
    n_token_1: int = 1
    n_token_2: int = 5
    n_masked_1: int = 10
    n_masked_2: int = 20
    mask_drop: float = 0.24
    dropout: float = 0.0
    ce_branch_weight: float = 1.0
    div_weight_1: float = 1.0
    div_weight_2: float = 1.0
    div_2_rule: str = "branches"


#: The level-2 diversity terms :class:`HAFED` can train with (see the module docstring).
DIV_2_RULES = ("branches", "sasha_code")


class HAFED(MILModel):
    """Two-level attention MIL: children -> patch row ``V`` (level 1), patches -> slide (level 2).

    Shapes (a leading batch dim ``B`` is optional everywhere, as in :class:`~zoo.models.abmil.ABMIL`):

    - :meth:`aggregate`: ``u (..., N, k, d)``, ``child_mask (..., N, k)`` -> ``V (..., N, d)``;
    - :meth:`attention_logits`: ``s (B, N, d)`` -> raw level-2 logits ``(B, M, N)``, row-wise;
    - :meth:`slide_head`: ``pooled (B, d)`` -> ``(B, C)``;
    - :meth:`classify`: ``s (B, N, d)``, ``mask (B, N)`` -> ``logits (B, C)``, ``attention (B, N)``,
      ``branch_logits (B, M, C)``, ``branch_attention (B, M, N)``;
    - :meth:`forward`: ``features (B, N, k, d)``, ``mask (B, N)``, ``child_mask (B, N, k)`` ->
      the :meth:`classify` outputs plus ``level1_attention (B, N, k)`` and
      ``level1_branch_attention (B, N, K_1, k)``.
    """

    family: ClassVar[str] = "hafed"
    config_class = HAFEDConfig
    input_view: ClassVar[str] = "hier"  # type: ignore[assignment]
    needs_hr: ClassVar[bool] = True

    def __init__(self, config: HAFEDConfig) -> None:
        super().__init__(config)
        for name in ("n_token_1", "n_token_2"):
            if getattr(config, name) < 1:
                raise ValueError(f"HAFEDConfig.{name} must be >= 1, got {getattr(config, name)}")
        if config.div_2_rule not in DIV_2_RULES:
            raise ValueError(
                f"HAFEDConfig.div_2_rule must be one of {DIV_2_RULES}, got {config.div_2_rule!r}"
            )
        if not 0.0 <= config.mask_drop <= 1.0:
            raise ValueError(f"HAFEDConfig.mask_drop must be in [0, 1], got {config.mask_drop}")
        d = config.in_dim
        self.level1_attention = GatedAttention(d, config.attn_dim, config.n_token_1, True, config.dropout)
        self.level2_attention = GatedAttention(d, config.attn_dim, config.n_token_2, True, config.dropout)
        self.branch_heads = nn.ModuleList(nn.Linear(d, config.num_classes) for _ in range(config.n_token_2))
        self.classifier = nn.Linear(d, config.num_classes)

    # ------------------------------------------------------------------ level 1
    def _aggregate(self, u: Tensor, child_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """``u (..., N, k, d)`` -> ``V (..., N, d)`` and branch weights ``(..., N, K_1, k)``."""
        if u.dim() < 3:
            raise ValueError(
                f"HAFED.aggregate expects high-res features (..., N, k, d), got {tuple(u.shape)}"
            )
        if child_mask is not None and child_mask.shape != u.shape[:-1]:
            raise ValueError(
                f"HAFED.aggregate: child_mask must have shape {tuple(u.shape[:-1])}, got {tuple(child_mask.shape)}"
            )
        logits = self.level1_attention(u)  # (..., N, K1, k)
        m = None if child_mask is None else child_mask.unsqueeze(-2)  # (..., N, 1, k)
        if self.training:
            logits = stochastic_topk_mask(logits, self.config.n_masked_1, self.config.mask_drop, m)
        weights = masked_softmax(logits, m)  # (..., N, K1, k)
        v = (weights.mean(-2).unsqueeze(-2) @ u).squeeze(-2)  # (..., N, d)
        return v, weights

    def aggregate(self, u: Tensor, child_mask: Tensor | None = None) -> Tensor:
        r"""Level 1: ``V_n = sum_j alpha_{n,j} u_{n,j}`` with branch-averaged gated attention over the children.

        Args:
            u: high-res children ``(..., N, k, d)``.
            child_mask: ``(..., N, k)`` bool, True = valid child; invalid children get weight 0.
                A patch with no valid child gets ``V_n = 0``.

        Returns:
            ``V (..., N, d)``. STKIM is applied only in training mode; call ``model.eval()`` for
            the deterministic oracle features the environment uses.
        """
        return self._aggregate(u, child_mask)[0]

    # ------------------------------------------------------------------ level 2
    def attention_logits(self, s: Tensor) -> Tensor:
        """Raw level-2 gated-attention logits ``s (B, N, d)`` -> ``(B, M, N)`` (or ``(N, d)`` -> ``(M, N)``).

        Row-wise: ``logits[..., :, i]`` depends only on ``s[..., i, :]``, so a caller that changes a
        few state rows can recompute the logits of those rows only. No STKIM here.
        """
        return self.level2_attention(s)

    def slide_head(self, pooled: Tensor) -> Tensor:
        """The slide classifier ``Linear(d, C)``: ``pooled (..., d)`` -> logits ``(..., C)``."""
        return self.classifier(pooled)

    def classify(self, s: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        r"""Level 2 alone on a state ``s (B, N, d)``: the RL reward model.

        ``w = masked_softmax_i(a)`` per branch (``a`` from :meth:`attention_logits`, STKIM in
        training mode only), ``attention = mean_m w``, ``logits = slide_head(sum_i attention_i s_i)``,
        ``branch_logits[m] = Head_m(sum_i w_{m,i} s_i)``.

        Returns:
            ``logits (B, C)``, ``attention (B, N)``, ``branch_logits (B, M, C)``,
            ``branch_attention (B, M, N)``, ``embedding (B, d)`` (the pooled state).
        """
        check_batched(s, f"{type(self).__name__}.classify", "(B, N, D)")
        if mask is not None and mask.shape != s.shape[:2]:
            raise ValueError(
                f"HAFED.classify: mask must have shape {tuple(s.shape[:2])}, got {tuple(mask.shape)}"
            )
        logits = self.attention_logits(s)  # (B, M, N)
        m = None if mask is None else mask[:, None, :]
        if self.training:
            logits = stochastic_topk_mask(logits, self.config.n_masked_2, self.config.mask_drop, m)
        weights = masked_softmax(logits, m)  # (B, M, N)
        branch_embeddings = attention_pool(weights, s)  # (B, M, d)
        branch_logits = torch.stack(
            [head(branch_embeddings[:, i]) for i, head in enumerate(self.branch_heads)], dim=1
        )
        attention = weights.mean(1)  # (B, N)
        embedding = (attention.unsqueeze(1) @ s).squeeze(1)  # (B, d)
        out = {
            "logits": self.slide_head(embedding),
            "attention": attention,
            "branch_logits": branch_logits,
            "branch_attention": weights,
            "embedding": embedding,
        }
        return out

    # ------------------------------------------------------------------ both levels
    def forward(
        self,
        features: Tensor,
        mask: Tensor | None = None,
        child_mask: Tensor | None = None,
        coords: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Both levels: ``classify(aggregate(features, child_mask), mask)``.

        Args:
            features: high-res children ``U (B, N, k, d)``.
            mask: valid patches ``(B, N)``.
            child_mask: valid children ``(B, N, k)``.
            coords: ignored (accepted for the common MIL call signature).

        Returns:
            The :meth:`classify` outputs, plus ``state`` (``V``, ``(B, N, d)``), ``level1_attention``
            (``(B, N, k)``, branch-averaged) and ``level1_branch_attention`` (``(B, N, K_1, k)``).
        """
        check_batched(features, type(self).__name__, "(B, N, k, D)")
        if mask is not None and child_mask is not None:
            child_mask = child_mask & mask[..., None]
        v, level1 = self._aggregate(features, child_mask)
        out = self.classify(v, mask)
        out["state"] = v
        out["level1_attention"] = level1.mean(-2)
        out["level1_branch_attention"] = level1
        return out

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``CE(slide) + w_b * mean_m CE(branch m) + w_1 * div_1 + w_2 * div_2`` on a collated batch.

        ``div_1`` averages over valid patches only (padding rows do not count); ``div_2`` follows
        ``config.div_2_rule``.
        """
        cfg = self.config
        out = self.predict(batch)
        label = batch["label"]
        ce = F.cross_entropy(out["logits"], label)
        terms = {"ce": ce}
        total = ce
        if cfg.n_token_2 > 1:
            b, m, c = out["branch_logits"].shape
            ce_branch = F.cross_entropy(out["branch_logits"].reshape(b * m, c), label.repeat_interleave(m))
            terms["ce_branch"] = ce_branch
            total = total + cfg.ce_branch_weight * ce_branch
        level1 = out["level1_branch_attention"]  # (B, N, K1, k)
        valid = batch.get("mask")
        div_1 = diversity_loss(level1[valid] if valid is not None else level1.flatten(0, 1))
        branch_attention = out["branch_attention"]  # (B, M, N)
        if cfg.div_2_rule == "sasha_code":  # between the branch-weight vectors of patches 0..M-1
            first = min(cfg.n_token_2, branch_attention.shape[-1])
            div_2 = diversity_loss(branch_attention[..., :first].transpose(-1, -2))
        else:
            div_2 = diversity_loss(branch_attention)
        terms["div_1"], terms["div_2"] = div_1, div_2
        total = total + cfg.div_weight_1 * div_1 + cfg.div_weight_2 * div_2
        return {"loss": total, **terms, "logits": out["logits"].detach()}
