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

Each rule is an object (like the update rules of :mod:`wsigym.envs.state_update`) that declares in
``needs`` which extra inputs beyond the logits, labels and ``done`` it reads (``"hit"``,
``"evidence"``); :data:`REWARD_RULES` names them, and :func:`reward_rule` resolves a name or a rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


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


#: The extra inputs a rule may declare in ``needs``: what the engine computes only for rules that read them.
REWARD_INPUTS = ("hit", "evidence")


class RewardRule(Protocol):
    """A reward rule: ``name``, the extra inputs it ``needs`` (of :data:`REWARD_INPUTS`), and
    ``rule(logits_before (B, C), logits_after (B, C), labels (B,), done (B,), hit, evidence) -> (B,)``."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]

    def __call__(
        self,
        logits_before: Tensor,
        logits_after: Tensor,
        labels: Tensor,
        done: Tensor,
        hit: Tensor | None = None,
        evidence: Tensor | None = None,
    ) -> Tensor: ...


@dataclass(frozen=True)
class CERule:
    """``"ce"``: :math:`r_t = -\\mathrm{CE}_{t+1}` every step."""

    name: ClassVar[str] = "ce"
    needs: ClassVar[tuple[str, ...]] = ()

    def __call__(
        self,
        logits_before: Tensor,
        logits_after: Tensor,
        labels: Tensor,
        done: Tensor,
        hit: Tensor | None = None,
        evidence: Tensor | None = None,
    ) -> Tensor:
        return -cross_entropy(logits_after, labels)


@dataclass(frozen=True)
class DeltaCERule:
    """``"delta_ce"``: :math:`r_t = \\mathrm{CE}_t - \\mathrm{CE}_{t+1}`."""

    name: ClassVar[str] = "delta_ce"
    needs: ClassVar[tuple[str, ...]] = ()

    def __call__(
        self,
        logits_before: Tensor,
        logits_after: Tensor,
        labels: Tensor,
        done: Tensor,
        hit: Tensor | None = None,
        evidence: Tensor | None = None,
    ) -> Tensor:
        return cross_entropy(logits_before, labels) - cross_entropy(logits_after, labels)


@dataclass(frozen=True)
class DeltaMarginRule:
    """``"delta_margin"``: :math:`r_t = m_{t+1} - m_t`, the gain in log-odds of the true class."""

    name: ClassVar[str] = "delta_margin"
    needs: ClassVar[tuple[str, ...]] = ()

    def __call__(
        self,
        logits_before: Tensor,
        logits_after: Tensor,
        labels: Tensor,
        done: Tensor,
        hit: Tensor | None = None,
        evidence: Tensor | None = None,
    ) -> Tensor:
        return log_odds(logits_after, labels) - log_odds(logits_before, labels)


@dataclass(frozen=True)
class TerminalRule:
    """``"terminal"``: 0 except at the last step, :math:`r_{T-1} = -\\mathrm{CE}_T`."""

    name: ClassVar[str] = "terminal"
    needs: ClassVar[tuple[str, ...]] = ()

    def __call__(
        self,
        logits_before: Tensor,
        logits_after: Tensor,
        labels: Tensor,
        done: Tensor,
        hit: Tensor | None = None,
        evidence: Tensor | None = None,
    ) -> Tensor:
        ce_after = cross_entropy(logits_after, labels)
        return torch.where(done, -ce_after, torch.zeros_like(ce_after))


@dataclass(frozen=True)
class EvidenceRule:
    """``"evidence"``: the zoomed patch's centred evidence ``(B,)`` for the slide label."""

    name: ClassVar[str] = "evidence"
    needs: ClassVar[tuple[str, ...]] = ("evidence",)

    def __call__(
        self,
        logits_before: Tensor,
        logits_after: Tensor,
        labels: Tensor,
        done: Tensor,
        hit: Tensor | None = None,
        evidence: Tensor | None = None,
    ) -> Tensor:
        return evidence.float()


@dataclass(frozen=True)
class HitRule:
    """``"hit"``: 1 where the zoomed patch holds tumour (ground truth ``hit (B,)``), else 0."""

    name: ClassVar[str] = "hit"
    needs: ClassVar[tuple[str, ...]] = ("hit",)

    def __call__(
        self,
        logits_before: Tensor,
        logits_after: Tensor,
        labels: Tensor,
        done: Tensor,
        hit: Tensor | None = None,
        evidence: Tensor | None = None,
    ) -> Tensor:
        return hit.float()


#: Reward rule name -> rule.
REWARD_RULES: dict[str, RewardRule] = {
    rule.name: rule
    for rule in (CERule(), DeltaCERule(), DeltaMarginRule(), EvidenceRule(), TerminalRule(), HitRule())
}
#: The rule names (what ``reward=`` and ``--reward`` accept as strings).
REWARDS = tuple(REWARD_RULES)

_MISSING_INPUT = {
    "hit": "the tumour ground truth of the zoomed patches",
    "evidence": "the centred evidence of the zoomed patches",
}


def reward_rule(rule: str | RewardRule) -> RewardRule:
    """The rule named ``rule`` in :data:`REWARD_RULES`, or ``rule`` itself when it is a rule object.

    Raises:
        ValueError: for an unknown name, naming it and the choices.
    """
    if isinstance(rule, str):
        if rule not in REWARD_RULES:
            raise ValueError(f"reward must be one of {REWARDS}, got {rule!r}")
        return REWARD_RULES[rule]
    if not callable(rule) or not isinstance(getattr(rule, "needs", None), tuple):
        raise ValueError(f"reward must be one of {REWARDS} or a reward rule object, got {rule!r}")
    return rule


def reward(
    rule: str | RewardRule,
    logits_before: Tensor,
    logits_after: Tensor,
    labels: Tensor,
    done: Tensor,
    hit: Tensor | None = None,
    evidence: Tensor | None = None,
) -> Tensor:
    """Reward ``(B,)`` of one step from HAFED's logits ``(B, C)`` on the state before and after it, the
    labels, whether the episode ends, and the extra inputs ``(B,)`` the rule ``needs``: for ``"hit"``
    whether the zoomed patch holds tumour, for ``"evidence"`` the centred evidence of the zoomed patch
    (:func:`patch_evidence`, indexed by the label, minus the slide mean).

    Raises:
        ValueError: for an unknown rule, or a rule without an input it needs.
    """
    r = reward_rule(rule)
    given = {"hit": hit, "evidence": evidence}
    for name in r.needs:
        if given.get(name) is None:
            raise ValueError(f"reward {r.name!r} needs {_MISSING_INPUT.get(name, name)}")
    return r(logits_before, logits_after, labels, done, hit=hit, evidence=evidence)
