import pytest
import torch
import torch.nn.functional as F

from wsigym.envs.reward import cross_entropy, log_odds, reward


def test_log_odds_is_the_ce_in_other_form():
    """CE = log(1 + e^-m) for any number of classes, m the log-odds of the true class."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(64, 3, generator=g) * 4, torch.randint(0, 3, (64,), generator=g)
    torch.testing.assert_close(F.softplus(-log_odds(logits, labels)), cross_entropy(logits, labels))
    two = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    torch.testing.assert_close(log_odds(two, torch.tensor([0, 0])), torch.tensor([3.0, -2.5]))


def test_margin_reward_does_not_saturate():
    """Past a confident prediction the CE gain vanishes; the log-odds gain stays."""
    before, after, labels = torch.tensor([[8.0, 0.0]]), torch.tensor([[12.0, 0.0]]), torch.tensor([0])
    done = torch.tensor([False])
    assert reward("delta_ce", before, after, labels, done).item() < 1e-3
    assert reward("delta_margin", before, after, labels, done).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="reward must be one of"):
        reward("accuracy", before, after, labels, done)


def test_evidence_needs_its_input():
    logits, labels, done = torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([False, True])
    with pytest.raises(ValueError, match="evidence"):
        reward("evidence", logits, logits, labels, done)
    evidence = torch.tensor([0.5, -0.25])
    torch.testing.assert_close(reward("evidence", logits, logits, labels, done, evidence=evidence), evidence)


def test_reward_rule_registry():
    """Names resolve to rule objects that declare their extra inputs; a bad name is named with the choices."""
    from wsigym.envs.reward import REWARD_RULES, REWARDS, RewardRule, reward_rule

    assert tuple(REWARD_RULES) == REWARDS and "ce" in REWARDS
    assert reward_rule("hit") is REWARD_RULES["hit"] and reward_rule("hit").needs == ("hit",)
    assert reward_rule("evidence").needs == ("evidence",) and reward_rule("ce").needs == ()
    rule = RewardRule("hit_twice", ("hit",), lambda x: 2 * x.hit.float())
    assert reward_rule(rule) is rule
    with pytest.raises(ValueError, match="'hit' needs the tumour ground truth"):
        reward("hit", torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), torch.tensor([False]))
    with pytest.raises(ValueError, match=r"RewardRule\.needs"):
        RewardRule("odd", ("tumour",), lambda x: x.hit)
    with pytest.raises(ValueError, match=r"got 'accuracy'") as err:
        reward_rule("accuracy")
    assert all(name in str(err.value) for name in REWARDS)


def test_rule_object_equals_its_name():
    g = torch.Generator().manual_seed(1)
    before, after = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    labels, done = torch.randint(0, 3, (8,), generator=g), torch.arange(8) % 2 == 0
    from wsigym.envs.reward import REWARD_RULES

    for name, rule in REWARD_RULES.items():
        extra = {need: torch.rand(8, generator=g) > 0.5 for need in rule.needs}
        assert torch.equal(
            reward(name, before, after, labels, done, **extra),
            reward(rule, before, after, labels, done, **extra),
        )
