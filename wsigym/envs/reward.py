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

Each rule is a :class:`RewardRule` object (like the update rules of :mod:`wsigym.envs.state_update`)
that declares in ``needs`` which extra inputs beyond the logits, labels and ``done`` it reads
(``"hit"``, ``"evidence"``), so the engine computes those only for the rules that need them;
:data:`REWARD_RULES` names them, and :func:`reward_rule` resolves a name or a rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


#: The extra inputs a rule may declare in ``needs``, with what each one is.
REWARD_INPUTS = {
    "hit": "the tumour ground truth of the zoomed patches",
    "evidence": "the centred evidence of the zoomed patches",
}


@dataclass(frozen=True)
class RewardInputs:
    """What one step gives a rule: HAFED's ``logits_before``/``logits_after (B, C)``, ``labels (B,)``,
    ``done (B,)`` bool, and the extra inputs ``hit (B,)`` bool / ``evidence (B,)`` (``None`` unless given)."""

    logits_before: Tensor
    logits_after: Tensor
    labels: Tensor
    done: Tensor
    hit: Tensor | None = None
    evidence: Tensor | None = None


@dataclass(frozen=True)
class RewardRule:
    """A reward rule: its ``name``, the extra inputs it ``needs`` (keys of :data:`REWARD_INPUTS`) and
    ``compute(RewardInputs) -> (B,)``. Calling it on :class:`RewardInputs` checks that the inputs it needs are given.

    Raises:
        ValueError: at construction, for an unknown entry of ``needs``.
    """

    name: str
    needs: tuple[str, ...]
    compute: Callable[[RewardInputs], Tensor]

    def __post_init__(self) -> None:
        unknown = [n for n in self.needs if n not in REWARD_INPUTS]
        if unknown:
            raise ValueError(f"RewardRule.needs must hold names of {tuple(REWARD_INPUTS)}, got {unknown}")

    def __call__(self, x: RewardInputs) -> Tensor:
        """Reward ``(B,)`` of one step.

        Raises:
            ValueError: when an input the rule needs is missing.
        """
        for need in self.needs:
            if getattr(x, need) is None:
                raise ValueError(f"reward {self.name!r} needs {REWARD_INPUTS[need]}")
        return self.compute(x)


def _ce(x: RewardInputs) -> Tensor:
    return -cross_entropy(x.logits_after, x.labels)


def _delta_ce(x: RewardInputs) -> Tensor:
    return cross_entropy(x.logits_before, x.labels) - cross_entropy(x.logits_after, x.labels)


def _delta_margin(x: RewardInputs) -> Tensor:
    return log_odds(x.logits_after, x.labels) - log_odds(x.logits_before, x.labels)


def _terminal(x: RewardInputs) -> Tensor:
    ce_after = cross_entropy(x.logits_after, x.labels)
    return torch.where(x.done, -ce_after, torch.zeros_like(ce_after))


#: Reward rule name -> rule (module docstring for each).
REWARD_RULES: dict[str, RewardRule] = {
    rule.name: rule
    for rule in (
        RewardRule("ce", (), _ce),
        RewardRule("delta_ce", (), _delta_ce),
        RewardRule("delta_margin", (), _delta_margin),
        RewardRule("evidence", ("evidence",), lambda x: x.evidence.float()),
        RewardRule("terminal", (), _terminal),
        RewardRule("hit", ("hit",), lambda x: x.hit.float()),
    )
}
#: The rule names (what ``reward=`` and ``--reward`` accept as strings).
REWARDS = tuple(REWARD_RULES)


def reward_rule(rule: str | RewardRule) -> RewardRule:
    """The rule named ``rule`` in :data:`REWARD_RULES`, or ``rule`` itself when it is a :class:`RewardRule`.

    Raises:
        ValueError: for anything else, naming it and the choices.
    """
    if isinstance(rule, RewardRule):
        return rule
    if not isinstance(rule, str) or rule not in REWARD_RULES:
        raise ValueError(f"reward must be one of {REWARDS} or a RewardRule, got {rule!r}")
    return REWARD_RULES[rule]


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
    return reward_rule(rule)(RewardInputs(logits_before, logits_after, labels, done, hit, evidence))
