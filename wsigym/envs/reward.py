r"""Reward rules of ``WSIZoom``, batched: all from the cross-entropy of the frozen HAFED on the state.

With :math:`\mathrm{CE}_t = \mathrm{CE}(y, \mathrm{HAFED.classify}(S_t))` (on logits, no double softmax):

- ``"ce"`` (SASHA's default, ``only_ce_as_reward: True``): :math:`r_t = -\mathrm{CE}_{t+1}` every step.
  With :math:`\gamma = 1` the return rewards becoming confident early.
- ``"delta_ce"``: :math:`r_t = \mathrm{CE}_t - \mathrm{CE}_{t+1}` (the improvement; the return
  telescopes to :math:`\mathrm{CE}_0 - \mathrm{CE}_T`).
- ``"terminal"``: :math:`r_t = 0` except at the last step, :math:`r_{T-1} = -\mathrm{CE}_T`.
- ``"hit"``: :math:`r_t = 1` when the zoomed patch holds tumour (ground truth), else 0. Not
  SASHA's and not from HAFED: a diagnostic reward that tells whether an agent can learn where
  tumour is at all. Needs slides with tumour ground truth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REWARDS = ("ce", "delta_ce", "terminal", "hit")


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-environment ``CE(y, logits)``: ``logits (B, C)``, ``labels (B,)`` -> ``(B,)``."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def reward(rule: str, ce_before: Tensor, ce_after: Tensor, done: Tensor, hit: Tensor | None = None) -> Tensor:
    """Reward ``(B,)`` of one step from ``CE_t``, ``CE_{t+1}``, whether the episode ends and (for
    ``"hit"``) whether the zoomed patch holds tumour, all ``(B,)``.

    Raises:
        ValueError: for an unknown rule, or ``"hit"`` without ``hit``.
    """
    if rule == "hit":
        if hit is None:
            raise ValueError("reward 'hit' needs the tumour ground truth of the zoomed patches")
        return hit.to(ce_after.dtype)
    if rule == "ce":
        return -ce_after
    if rule == "delta_ce":
        return ce_before - ce_after
    if rule == "terminal":
        return torch.where(done, -ce_after, torch.zeros_like(ce_after))
    raise ValueError(f"reward must be one of {REWARDS}, got {rule!r}")
