r"""Reward rules of ``WSIZoom``, batched: all from the frozen HAFED, except the diagnostic ``"hit"``.

With :math:`\mathrm{CE}_t = \mathrm{CE}(y, \mathrm{HAFED.classify}(S_t))` (on logits, no double softmax):

- ``"ce"`` (SASHA's default, ``only_ce_as_reward: True``): :math:`r_t = -\mathrm{CE}_{t+1}` every step.
  With :math:`\gamma = 1` the return rewards becoming confident early.
- ``"delta_ce"``: :math:`r_t = \mathrm{CE}_t - \mathrm{CE}_{t+1}` (the improvement; the return
  telescopes to :math:`\mathrm{CE}_0 - \mathrm{CE}_T`).
- ``"delta_margin"``: :math:`r_t = m_{t+1} - m_t` with :math:`m_t = \ell_{t,y} - \log\sum_{j \ne y}
  e^{\ell_{t,j}}` the log-odds of the true class from HAFED's logits :math:`\ell_t` (so
  :math:`\mathrm{CE}_t = \log(1 + e^{-m_t})`). Not SASHA's: the cross-entropy saturates once the slide is
  classified, so after the first tumour zoom further ones earn nearly nothing; the log-odds do not.
  Still weakly supervised (slide label only).
- ``"evidence"``: :math:`r_t = p(y \mid V(a_t)) - \frac1N \sum_i p(y \mid V(i))`, with
  :math:`p(\cdot \mid V(i)) = \mathrm{softmax}(\mathrm{HAFED.classify}([V(i)]))` HAFED on patch
  :math:`i`'s high-res row alone (a bag of one). Each zoom is credited with how much more the evidence
  it reveals supports the slide label than an average patch of the slide does; the slide mean is a
  per-slide baseline, so slides whose every patch supports the label (benign ones) give rewards near 0.
  Not SASHA's; still weakly supervised (HAFED and the reward see only slide labels). It needs ``V`` of
  every patch, which cached slides hold (SASHA's training precomputes it too), not live ones.
- ``"terminal"``: :math:`r_t = 0` except at the last step, :math:`r_{T-1} = -\mathrm{CE}_T`.
- ``"hit"``: :math:`r_t = 1` when the zoomed patch holds tumour (ground truth), else 0. Not
  SASHA's and not from HAFED: a diagnostic reward that tells whether an agent can learn where
  tumour is at all. Needs slides with tumour ground truth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REWARDS = ("ce", "delta_ce", "delta_margin", "evidence", "terminal", "hit")


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-environment ``CE(y, logits)``: ``logits (B, C)``, ``labels (B,)`` -> ``(B,)``."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def log_odds(logits: Tensor, labels: Tensor) -> Tensor:
    r"""Per-environment log-odds of the true class, ``logits (B, C)``, ``labels (B,)`` -> ``(B,)``:
    :math:`\ell_y - \log\sum_{j \ne y} e^{\ell_j}` (for two classes, the logit difference)."""
    logits = logits.float()
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


@torch.no_grad()
def patch_evidence(hafed: torch.nn.Module, v: Tensor, chunk: int = 65536) -> Tensor:
    """HAFED's class probabilities on each row alone: ``v (M, d)`` -> ``(M, C)``,
    ``softmax(HAFED.classify(v[i : i + 1]))`` for every row (in chunks of ``chunk`` bags of one)."""
    return torch.cat(
        [hafed.classify(v[i : i + chunk, None])["logits"].softmax(-1) for i in range(0, len(v), chunk)]
    )


def reward(
    rule: str,
    logits_before: Tensor,
    logits_after: Tensor,
    labels: Tensor,
    done: Tensor,
    hit: Tensor | None = None,
    evidence: Tensor | None = None,
) -> Tensor:
    """Reward ``(B,)`` of one step from HAFED's logits ``(B, C)`` on the state before and after it, the
    labels, whether the episode ends, and the rule's extra input ``(B,)``: for ``"hit"`` whether the
    zoomed patch holds tumour, for ``"evidence"`` the centred evidence of the zoomed patch
    (:func:`patch_evidence`, indexed by the label, minus the slide mean).

    Raises:
        ValueError: for an unknown rule, or a rule without its extra input.
    """
    if rule == "hit":
        if hit is None:
            raise ValueError("reward 'hit' needs the tumour ground truth of the zoomed patches")
        return hit.float()
    if rule == "evidence":
        if evidence is None:
            raise ValueError("reward 'evidence' needs the centred evidence of the zoomed patches")
        return evidence.float()
    if rule == "delta_margin":
        return log_odds(logits_after, labels) - log_odds(logits_before, labels)
    ce_after = cross_entropy(logits_after, labels)
    if rule == "ce":
        return -ce_after
    if rule == "delta_ce":
        return cross_entropy(logits_before, labels) - ce_after
    if rule == "terminal":
        return torch.where(done, -ce_after, torch.zeros_like(ce_after))
    raise ValueError(f"reward must be one of {REWARDS}, got {rule!r}")
