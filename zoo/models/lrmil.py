r"""LRMIL in feature space: low-res MIL distilled from a high-res teacher (Shin & Jeong, MICCAI 2026).

The original LRMIL fine-tunes the patch encoder (CONCH) on 5× patches so that its tokens match the
20× teacher's, then trains a student ABMIL on 5× features with knowledge distillation. This module
works on precomputed features (``mil-models.md`` §5), so stage 1 learns a *projection* of low-res
features into the high-res feature space instead of fine-tuning an encoder.

**Stage 1** (:class:`LRProjector`, cross-resolution distillation). For low-res patch :math:`i` with
children :math:`u_{ij}` (valid :math:`j`) and teacher attention :math:`\alpha_{ij}` over the children
(renormalised per parent; uniform when there is no teacher or it gives a parent zero attention):

.. math:: t_i = \sum_j \tilde\alpha_{ij}\, u_{ij}, \qquad
          \mathcal{L}_1 = \tfrac{1}{N}\sum_i \lVert g(z_i) - t_i \rVert^2 / d,
          \qquad g(z) = z + \mathrm{MLP}(z) \ (\text{residual}) .

**Stage 2** (student :class:`LRMIL`): ABMIL-style gated attention over :math:`h_i = \mathrm{ReLU}(W
g(z_i))` with an instance classifier ``Linear(hidden, 2)``. With the teacher's logits :math:`t`, the
guided attention :math:`g_i = \mathrm{mean}_j \alpha_{ij}` (or max) renormalised over valid patches,
and the student's attention logits :math:`a_i`:

.. math::
    \mathcal{L} = \lambda_{ce}\,\mathrm{CE}(s, y)
      + \lambda_{bag}\,T_b^2\,\mathrm{KL}\big(\sigma(t/T_b)\,\|\,\sigma(s/T_b)\big)
      + \lambda_{attn}\,T_a^2\,\mathrm{KL}\big(\sigma(\log g / T_a)\,\|\,\sigma(a / T_a)\big)
      + \lambda_{inst}\,\mathrm{CE}_{inst}

where :math:`\mathrm{CE}_{inst}` labels the top-k patches by guided attention 1 and the bottom-k 0
(k = ``topk``, capped at N/2). Attention terms are skipped for a slide whose guided attention is all
zero; without a teacher only the CE term remains. Inference reads low-res features only.

**Not published:** every λ, both temperatures, k's value in experiments, widths, epochs. The
defaults here are choices (marked unverified).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import MILConfig, MILModel, check_batched
from zoo.nn import GatedAttention, attention_pool, masked_softmax


@dataclass
class LRMILConfig(MILConfig):
    """Args (values unpublished; defaults are choices):
    hr_dim: width of the high-res features the projector maps to (None: ``in_dim``).
    proj_hidden: hidden width of the projector MLP.
    projector_residual: ``g(z) = z + MLP(z)`` (needs ``hr_dim == in_dim``); False: ``g = MLP``.
    finetune_projector: let stage-2 gradients reach the projector (False: it stays as stage 1 left it).
    hidden: ABMIL projection width; attn_dim: attention hidden width; gated: gated attention.
    dropout: dropout after the projection and in the attention.
    lambda_ce, lambda_bag, lambda_attn, lambda_inst: loss weights.
    temperature_bag, temperature_attn: distillation temperatures.
    topk: instances per side of the instance loss (capped at N/2).
    guide_reduce: teacher child attention -> parent guide: ``"mean"`` or ``"max"``.
    """

    hr_dim: int | None = None
    proj_hidden: int = 256
    projector_residual: bool = True
    finetune_projector: bool = False
    hidden: int = 128
    attn_dim: int = 128
    gated: bool = True
    dropout: float = 0.0
    lambda_ce: float = 1.0
    lambda_bag: float = 0.5
    lambda_attn: float = 0.5
    lambda_inst: float = 0.3
    temperature_bag: float = 2.0
    temperature_attn: float = 1.0
    topk: int = 4
    guide_reduce: str = "mean"


class LRProjector(nn.Module):
    """Low-res -> high-res-aligned feature map ``g``: ``(..., in_dim) -> (..., out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, residual: bool = True) -> None:
        super().__init__()
        if residual and in_dim != out_dim:
            raise ValueError(f"LRProjector: residual needs in_dim == out_dim, got {in_dim} and {out_dim}")
        self.residual = residual
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        if residual:  # start at the identity
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, z: Tensor) -> Tensor:
        out = self.mlp(z)
        return z + out if self.residual else out


def child_weights(child_attention: Tensor | None, child_mask: Tensor) -> Tensor:
    """Per-parent weights over children ``(B, N, k)`` summing to 1 over valid children.

    ``child_attention (B, N, k)`` (teacher softmax weights) or None (uniform). A parent whose valid
    children all have zero attention falls back to uniform.
    """
    valid = child_mask.to(torch.float32)
    uniform = valid / valid.sum(-1, keepdim=True).clamp_min(1)
    if child_attention is None:
        return uniform
    a = child_attention.float() * valid
    total = a.sum(-1, keepdim=True)
    return torch.where(total > 0, a / total.clamp_min(1e-30), uniform)


def distillation_targets(hr_features: Tensor, weights: Tensor) -> Tensor:
    """Stage-1 targets ``t_i = sum_j w_ij u_ij``: ``(B, N, k, d)``, ``(B, N, k)`` -> ``(B, N, d)``."""
    return (weights[..., None] * hr_features).sum(-2)


class LRMIL(MILModel):
    """LRMIL student (see the module docstring). Reads low-res features only.

    Shapes: ``features (B, N, d)``, ``mask (B, N)`` -> ``logits (B, C)``,
    ``attention (B, N)``, ``attention_logits (B, N)``, ``instance_logits (B, N, 2)``,
    ``embedding (B, hidden)``.

    The teacher (any :class:`MILModel`, typically ``ABMIL(view="hr")``) is attached with
    :meth:`set_teacher`; it is not a submodule, so it is neither trained nor saved with the student.
    ``loss`` needs ``batch["hr_features"]`` for the teacher (``needs_hr``).
    """

    family: ClassVar[str] = "lrmil"
    config_class = LRMILConfig
    needs_hr: ClassVar[bool] = True

    def __init__(self, config: LRMILConfig) -> None:
        super().__init__(config)
        c = config
        if c.guide_reduce not in ("mean", "max"):
            raise ValueError(f"LRMILConfig.guide_reduce must be 'mean' or 'max', got {c.guide_reduce!r}")
        if c.temperature_bag <= 0 or c.temperature_attn <= 0:
            raise ValueError("LRMILConfig temperatures must be > 0")
        self.hr_dim = c.hr_dim or c.in_dim
        self.projector = LRProjector(c.in_dim, self.hr_dim, c.proj_hidden, c.projector_residual)
        self.projection = nn.Sequential(nn.Linear(self.hr_dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout))
        self.attention = GatedAttention(c.hidden, c.attn_dim, 1, c.gated, c.dropout)
        self.classifier = nn.Linear(c.hidden, c.num_classes)
        self.instance_classifier = nn.Linear(c.hidden, 2)
        self._teacher: list[MILModel] = []  # a list hides it from nn.Module registration

    # ---- teacher -------------------------------------------------------------------------------
    def set_teacher(self, teacher: MILModel | None) -> LRMIL:
        """Attach (or with None detach) the frozen high-res teacher; returns self."""
        self._teacher.clear()
        if teacher is not None:
            if not isinstance(teacher, MILModel):
                raise TypeError(f"LRMIL.set_teacher needs a MILModel, got {type(teacher).__name__}")
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self._teacher.append(teacher)
        return self

    @property
    def teacher(self) -> MILModel | None:
        return self._teacher[0] if self._teacher else None

    @torch.no_grad()
    def teacher_outputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """The teacher's ``logits (B, C)`` and ``child_attention (B, N, k)`` on ``batch``, or None.

        The teacher's attention may be over all children (``(B, N*k)`` or ``(B, N, k)``) or over
        parents (``(B, N)``, then spread uniformly over each parent's valid children).
        """
        teacher = self.teacher
        if teacher is None:
            return None
        if "hr_features" not in batch:
            raise KeyError("LRMIL's teacher needs batch['hr_features'] (collate with hr=True)")
        device = batch["features"].device
        teacher.to(device).eval()
        out = teacher.predict(batch)
        b, n, k = batch["hr_mask"].shape
        att = out["attention"]
        if att.shape == (b, n * k):
            att = att.reshape(b, n, k)
        elif att.shape == (b, n):
            att = att[..., None] * child_weights(None, batch["hr_mask"])
        elif att.shape != (b, n, k):
            raise ValueError(
                f"LRMIL: teacher attention has shape {tuple(att.shape)}; expected (B, N*k), (B, N, k) or (B, N)"
            )
        att = att * (batch["hr_mask"] & batch["mask"][..., None])
        return {"logits": out["logits"].float(), "child_attention": att.float()}

    # ---- stage 1 -------------------------------------------------------------------------------
    def projector_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Stage-1 MSE between ``g(z_i)`` and the teacher-attention-weighted child mean (valid patches)."""
        if "hr_features" not in batch:
            raise KeyError("LRMIL.projector_loss needs batch['hr_features'] (collate with hr=True)")
        t_out = self.teacher_outputs(batch)
        child_att = None if t_out is None else t_out["child_attention"]
        target = distillation_targets(batch["hr_features"], child_weights(child_att, batch["hr_mask"]))
        pred = self.projector(batch["features"])
        per_patch = (pred - target).pow(2).mean(-1)  # (B, N)
        m = batch["mask"].float()
        return (per_patch * m).sum() / m.sum().clamp_min(1)

    # ---- student -------------------------------------------------------------------------------
    def forward(
        self, features: Tensor, mask: Tensor | None = None, coords: Tensor | None = None
    ) -> dict[str, Tensor]:
        check_batched(features, type(self).__name__, "(B, N, D)")
        z = self.projector(features)
        if not self.config.finetune_projector:
            z = z.detach()
        h = self.projection(z)
        att_logits = self.attention(h)[:, 0]  # (B, N)
        weights = masked_softmax(att_logits, mask)
        embedding = attention_pool(weights[:, None], h)[:, 0]
        out = {
            "logits": self.classifier(embedding),
            "attention": weights,
            "attention_logits": att_logits,
            "instance_logits": self.instance_classifier(h),
            "embedding": embedding,
        }
        return out

    def guided_attention(self, child_attention: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Teacher guide per parent ``(B, N)``: mean/max of child attention, renormalised (0 rows stay 0)."""
        child_mask = batch["hr_mask"]
        if self.config.guide_reduce == "mean":
            g = child_attention.sum(-1) / child_mask.sum(-1).clamp_min(1)
        else:
            g = child_attention.masked_fill(~child_mask, 0).amax(-1)
        g = g * batch["mask"]
        total = g.sum(-1, keepdim=True)
        return torch.where(total > 0, g / total.clamp_min(1e-30), torch.zeros_like(g))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        c = self.config
        out = self.predict(batch)
        logits = out["logits"]
        ce = F.cross_entropy(logits, batch["label"])
        zero = logits.new_zeros(())
        terms = {"ce": ce, "kd_bag": zero, "kd_attn": zero, "inst": zero}
        t_out = self.teacher_outputs(batch)
        if t_out is not None:
            tb = c.temperature_bag
            terms["kd_bag"] = (
                F.kl_div(
                    F.log_softmax(logits / tb, -1),
                    F.log_softmax(t_out["logits"] / tb, -1),
                    log_target=True,
                    reduction="batchmean",
                )
                * tb**2
            )
            guide = self.guided_attention(t_out["child_attention"], batch)  # (B, N)
            terms["kd_attn"], terms["inst"] = self._attention_terms(out, guide, batch["mask"])
        total = (
            c.lambda_ce * terms["ce"]
            + c.lambda_bag * terms["kd_bag"]
            + c.lambda_attn * terms["kd_attn"]
            + c.lambda_inst * terms["inst"]
        )
        return {"loss": total, **terms, "logits": logits.detach()}

    def _attention_terms(self, out: dict[str, Tensor], guide: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        ta = c.temperature_attn
        kd, inst = [], []
        for i in range(guide.shape[0]):
            valid = mask[i]
            g = guide[i][valid]
            if not bool(g.sum() > 0):
                continue  # no guidance for this slide
            target = torch.softmax(torch.log(g.clamp_min(1e-12)) / ta, -1)
            log_student = torch.log_softmax(out["attention_logits"][i][valid] / ta, -1)
            kd.append((target * (torch.log(target.clamp_min(1e-12)) - log_student)).sum() * ta**2)
            k = min(c.topk, int(valid.sum()) // 2)
            if k > 0:
                order = g.argsort(descending=True, stable=True)
                idx = torch.cat([order[:k], order[-k:]])
                labels = torch.cat([g.new_ones(k), g.new_zeros(k)]).long()
                inst.append(F.cross_entropy(out["instance_logits"][i][valid][idx], labels))
        zero = guide.new_zeros(())
        return (
            torch.stack(kd).mean() if kd else zero,
            torch.stack(inst).mean() if inst else zero,
        )
