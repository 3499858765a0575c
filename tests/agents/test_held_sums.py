"""Segment-tree softmax sums over held versions against the dense ``(L, V)`` computation."""

from __future__ import annotations

import pytest
import torch

from wsigym.agents.held_sums import held_intervals, held_softmax, held_tree, pack


def _intervals(steps: int, versions: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    first = torch.randint(0, steps, (versions,), generator=generator)
    end = first + 1 + torch.randint(0, steps, (versions,), generator=generator)
    end = end.clamp_max(steps)
    end[:2] = first[:2]  # two versions never held
    first[2], end[2] = 0, steps  # one held throughout (every timestep holds something)
    return first, end


def _dense(x, values, first, end, steps):
    t = torch.arange(steps)[:, None]
    held = (first[None] <= t) & (t < end[None])  # (L, V)
    logits = x[None].expand(steps, -1).masked_fill(~held, float("-inf"))
    return torch.logsumexp(logits, -1), torch.softmax(logits, -1) @ values


@pytest.mark.parametrize("steps", [1, 2, 7, 16, 33])
def test_held_softmax_equals_the_dense_softmax_and_its_gradient(steps):
    g = torch.Generator().manual_seed(steps)
    first, end = _intervals(steps, 40, g)
    x = (torch.randn(40, generator=g, dtype=torch.float64) * 3).requires_grad_()
    values = torch.randn(40, 5, generator=g, dtype=torch.float64).requires_grad_()
    lse, mean = held_softmax(x, values, held_tree(first, end, steps))
    lse_d, mean_d = _dense(x, values, first, end, steps)
    torch.testing.assert_close(lse, lse_d)
    torch.testing.assert_close(mean, mean_d)
    w = torch.randn(steps, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((lse * w).sum() + mean.square().sum(), (x, values))
    grads_d = torch.autograd.grad((lse_d * w).sum() + mean_d.square().sum(), (x, values))
    for a, b in zip(grads, grads_d, strict=True):
        torch.testing.assert_close(a, b)


def test_held_softmax_is_stable_when_the_largest_version_is_dropped():
    """The greedy zoom removes the top logit from the legal set: what remains is 300 nats lower, where
    a running sum with subtraction (``sum_t = sum_{t-1} + added - removed``) loses everything."""
    first, end = torch.tensor([0, 0, 0]), torch.tensor([1, 3, 3])
    x = torch.tensor([300.0, 0.0, -1.0], requires_grad=True)
    values = torch.tensor([[1.0], [2.0], [3.0]])
    lse, mean = held_softmax(x, values, held_tree(first, end, 3))
    lse_d, mean_d = _dense(x, values, first, end, 3)
    assert torch.isfinite(lse).all()
    torch.testing.assert_close(lse, lse_d)
    torch.testing.assert_close(mean, mean_d)


def test_pack_keeps_tables_apart_and_intervals_follow_the_index():
    index_a = torch.tensor([[0, 1], [0, 2], [3, 2]])  # versions 0..3, 3 timesteps
    index_b = torch.tensor([[0, 1, 2], [0, 3, 2]])  # versions 0..4 (4 never held), 2 timesteps
    first_a, end_a = held_intervals(index_a, 4)
    assert first_a.tolist() == [0, 0, 1, 2] and end_a.tolist() == [2, 1, 3, 3]
    first_b, end_b = held_intervals(index_b, 5)
    assert first_b.tolist()[4] >= end_b.tolist()[4]  # never held
    tree = pack([held_tree(first_a, end_a, 3), held_tree(first_b, end_b, 2)], [4, 5])
    x = torch.arange(9.0) / 4
    values = torch.arange(9.0)[:, None]
    lse, mean = held_softmax(x, values, tree)
    held = [*index_a, *(index_b + 4)]  # the versions each of the 5 timesteps holds, numbered as packed
    torch.testing.assert_close(lse, torch.stack([torch.logsumexp(x[h], 0) for h in held]))
    torch.testing.assert_close(mean[:, 0], torch.stack([(torch.softmax(x[h], 0) * h).sum() for h in held]))
