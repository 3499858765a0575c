r"""ASMIL: attention-stabilised MIL with an EMA anchor (Ye et al., ICLR 2026), multi-class, maskable.

Online model, for instances :math:`x_i` and :math:`T` learned branch queries :math:`q_t`
(initialised :math:`\mathcal N(0, \sigma_q^2)`, ``query_init_std`` :math:`\sigma_q`):

.. math::
    h_i = \mathrm{ReLU}(W x_i)\ (\text{no bias}), \qquad
    z_t = \mathrm{LN}_t\big(q_t + \mathrm{MHA}_t(q_t, h)\big), \qquad
    \hat y = C\Big(\mathrm{LN}\big(c + \mathrm{MHA}(c, \{z_t\}_{t \in \mathcal K})\big)\Big)

where each branch has its own 8-head cross-attention :math:`\mathrm{MHA}_t` (raw scores
:math:`a_{h,t,i}`, see :class:`zoo.nn.cross_attention.QueryCrossAttention`), and a learned slide query
:math:`c` attends over the kept branch tokens :math:`\mathcal K`: in training ``token_drop`` random
branches are dropped per slide, in eval all are kept.

Anchor: a deep copy of the online model made at construction, never trained by gradients, updated
after every optimiser step by :meth:`ASMIL.update_anchor`,
:math:`\theta_a \leftarrow m\,\theta_a + (1-m)\,\theta_o` (``ema`` :math:`m`; the trainer calls it through
:meth:`~zoo.models.base.MILModel.after_optimizer_step`). It runs in eval mode without gradients and
gives the target distribution with the normalised sigmoid (:func:`zoo.nn.attention.sigmax`) at
temperature :math:`\tau`:

.. math::
    L = \mathrm{CE}(\hat y, y) + \lambda\, L_{anchor}, \qquad
    L_{anchor} = -\frac{1}{H\,T\,N}\sum_{h,t,i} \tilde\sigma\big(a^{anchor}_{h,t,\cdot}/\tau\big)_i\,
    \log\operatorname{softmax}_i\big(a^{online}_{h,t,\cdot}\big)

(the mean over :math:`N` valid instances follows the reference). ACMIL's branch CE and diversity terms
are not used, as in ASMIL; the unused per-branch heads of the released code are left out.

This corrects the two bugs of the public ASMIL code (``mil-models.md`` §4): there the anchor is an
independently initialised network and its EMA runs only when an online weight is NaN, so it stays a
frozen random network. Defaults (8 tokens, 8 heads, token_drop 4, dropout 0.1, ema 0.999,
temperature 0.2, consistency weight 1) are those of MIL_BASELINE's corrected ``AS_MIL``; the projection
384 -> 128 is ASMIL's for ViT-S features.

``query_init_std`` defaults to the reference's :math:`10^{-6}`. On ``synth-c16`` the queries at
:math:`10^{-6}` stay at chance while queries drawn at std 1.0 learn (``examples/asmil_query_init.py``;
the measured numbers are in ``docs/lab-notes.md``). A likely reason (not verified further): with near-zero queries every
branch token starts as :math:`\mathrm{LN}(\mathrm{MHA}_t(q_t, h))`, the layer-normalised pooled bag,
whose slide-to-slide variation drowns the rare-instance signal. The shipped ``asmil-synth-c16`` therefore uses
``query_init_std=1.0`` (its card says so).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import MILConfig, MILModel, check_batched
from zoo.nn.attention import sigmax
from zoo.nn.cross_attention import QueryCrossAttention


@dataclass
class ASMILConfig(MILConfig):
    """Args:
    hidden: width of the bias-free instance projection (``D_inner``).
    n_token: number of branch queries T.
    heads: heads of every cross-attention.
    token_drop: branch tokens dropped per slide in training (< n_token).
    dropout: dropout on the cross-attention outputs.
    ema: anchor momentum m.
    temperature: anchor temperature tau.
    consistency_weight: weight lambda of the anchor loss.
    query_init_std: std of the normal initialisation of the branch queries and the slide query
        (reference: 1e-6; see the module docstring for why ``synth-c16`` uses 1.0).
    view: ``"lr"`` (low-res patches) or ``"hr"`` (every valid high-res child is an instance).
    """

    hidden: int = 128
    n_token: int = 8
    heads: int = 8
    token_drop: int = 4
    dropout: float = 0.1
    ema: float = 0.999
    temperature: float = 0.2
    consistency_weight: float = 1.0
    query_init_std: float = 1e-6
    view: str = "lr"


class ASMIL(MILModel):
    """Branch-query cross-attention MIL with an EMA anchor.

    Shapes: ``features (B, N, d)``, ``mask (B, N)`` ->

    - ``logits (B, C)``;
    - ``attention (B, N)``: branch attention averaged over heads and branches (0 on padding);
    - ``branch_scores (B, H, T, N)``: raw online scores :math:`a^{online}`;
    - ``branch_attention (B, H, T, N)``: their masked softmax;
    - ``kept_tokens (B, T)``: bool, the branches the slide query saw; ``embedding (B, hidden)``.

    The anchor is not a registered submodule: it is not in ``state_dict()``/``parameters()`` (so it is
    neither saved nor counted nor optimised) but follows ``.to()``/``.float()``. Loading weights with
    :meth:`load_state_dict` resets it to a copy of the loaded online weights.
    """

    family: ClassVar[str] = "asmil"
    config_class = ASMILConfig

    def __init__(self, config: ASMILConfig) -> None:
        super().__init__(config)
        if not 0 <= config.token_drop < config.n_token:
            raise ValueError(
                f"ASMILConfig.token_drop must be in [0, n_token={config.n_token}), got {config.token_drop}"
            )
        if not 0.0 <= config.ema <= 1.0:
            raise ValueError(f"ASMILConfig.ema must be in [0, 1], got {config.ema}")
        if config.query_init_std < 0:
            raise ValueError(f"ASMILConfig.query_init_std must be >= 0, got {config.query_init_std}")
        if config.temperature <= 0:
            raise ValueError(f"ASMILConfig.temperature must be > 0, got {config.temperature}")
        d = config.hidden
        self.projection = nn.Sequential(nn.Linear(config.in_dim, d, bias=False), nn.ReLU())
        self.branch_queries = nn.Parameter(torch.randn(1, config.n_token, d) * config.query_init_std)
        self.branch_attention = QueryCrossAttention(d, config.heads, config.n_token, config.dropout)
        self.branch_norm_weight = nn.Parameter(torch.ones(config.n_token, d))
        self.branch_norm_bias = nn.Parameter(torch.zeros(config.n_token, d))
        self.slide_query = nn.Parameter(torch.randn(1, 1, d) * config.query_init_std)
        self.slide_attention = QueryCrossAttention(d, config.heads, 1, config.dropout)
        self.slide_norm = nn.LayerNorm(d, eps=1e-6)
        self.classifier = nn.Linear(d, config.num_classes)
        self.reset_anchor()

    # ---- anchor -------------------------------------------------------------------------------
    @property
    def anchor(self) -> ASMIL:
        """The EMA anchor (an :class:`ASMIL` in eval mode with frozen parameters)."""
        return self.__dict__["_anchor"]

    def reset_anchor(self) -> None:
        """Make the anchor an exact copy of the online weights."""
        self.__dict__.pop("_anchor", None)
        anchor = copy.deepcopy(self)
        anchor.__dict__.pop("_anchor", None)
        anchor.requires_grad_(False)
        anchor.eval()
        self.__dict__["_anchor"] = anchor

    @torch.no_grad()
    def update_anchor(self) -> None:
        """``θa <- ema·θa + (1 - ema)·θo`` for floating tensors; other buffers are copied."""
        m = float(self.config.ema)
        online = self.state_dict()
        for name, a in self.anchor.state_dict().items():
            o = online[name]
            if a.is_floating_point():
                a.mul_(m).add_(o.detach().to(a.dtype), alpha=1.0 - m)
            else:
                a.copy_(o)

    def after_optimizer_step(self) -> None:
        self.update_anchor()

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> ASMIL:
        super()._apply(fn, *args, **kwargs)
        anchor = self.__dict__.get("_anchor")
        if anchor is not None:
            anchor._apply(fn, *args, **kwargs)
        return self

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.reset_anchor()
        return result

    # ---- forward ------------------------------------------------------------------------------
    def _branches(self, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Branch tokens ``(B, T, L)``, raw scores and weights ``(B, H, T, N)``."""
        queries = self.branch_queries.expand(h.shape[0], -1, -1)
        out, scores, weights = self.branch_attention(queries, h, mask)
        tokens = F.layer_norm(queries + out, (h.shape[-1],), eps=1e-6)
        return tokens * self.branch_norm_weight + self.branch_norm_bias, scores, weights

    def branch_scores(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """Raw branch scores ``(B, H, T, N)`` of ``features (B, N, d)``."""
        return self._branches(self.projection(features), mask)[1]

    def forward(
        self, features: Tensor, mask: Tensor | None = None, coords: Tensor | None = None
    ) -> dict[str, Tensor]:
        check_batched(features, type(self).__name__, "(B, N, D)")
        cfg: ASMILConfig = self.config
        h = self.projection(features)
        tokens, scores, weights = self._branches(h, mask)
        b = h.shape[0]
        keep = torch.ones(b, cfg.n_token, dtype=torch.bool, device=h.device)
        if self.training and cfg.token_drop > 0:
            drop = torch.rand(b, cfg.n_token, device=h.device).argsort(dim=-1)[:, : cfg.token_drop]
            keep = keep.scatter(1, drop, False)
        slide_query = self.slide_query.expand(b, -1, -1)
        pooled, _, _ = self.slide_attention(slide_query, tokens, keep)
        embedding = self.slide_norm(slide_query + pooled)[:, 0]
        out = {
            "logits": self.classifier(embedding),
            "attention": weights.mean(dim=(1, 2)),
            "branch_scores": scores,
            "branch_attention": weights,
            "kept_tokens": keep,
            "embedding": embedding,
        }
        return out

    def anchor_loss(self, online_scores: Tensor, features: Tensor, mask: Tensor | None) -> Tensor:
        """:math:`L_{anchor}` of online raw scores ``(B, H, T, N)`` against the anchor on ``features``."""
        with torch.no_grad():
            anchor_scores = self.anchor.branch_scores(features, mask)
        valid = None if mask is None else mask[:, None, None, :]
        target = sigmax(anchor_scores / self.config.temperature, valid)
        logits = online_scores if valid is None else online_scores.masked_fill(~valid, float("-inf"))
        log_p = torch.log_softmax(logits, dim=-1)
        terms = target * log_p
        if valid is not None:
            terms = terms.masked_fill(~valid, 0.0)
            n_valid = mask.sum(-1).clamp_min(1).to(terms.dtype)  # (B,)
        else:
            n_valid = torch.full((terms.shape[0],), terms.shape[-1], dtype=terms.dtype, device=terms.device)
        h, t = terms.shape[1], terms.shape[2]
        per_slide = -terms.sum(dim=(1, 2, 3)) / (h * t * n_valid)
        return per_slide.mean()

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``loss = ce + consistency_weight * anchor``."""
        inputs = self.inputs(batch)
        out = self(**inputs)
        ce = F.cross_entropy(out["logits"], batch["label"])
        anchor = self.anchor_loss(out["branch_scores"], inputs["features"], inputs["mask"])
        total = ce + self.config.consistency_weight * anchor
        return {"loss": total, "ce": ce, "anchor": anchor, "logits": out["logits"].detach()}
