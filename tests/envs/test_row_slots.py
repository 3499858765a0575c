"""Packed row slots: disjoint slots, rows carried through packings, bounded memory and copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsigym.envs.row_slots import MAX_SLACK, ROW_STEP, RowSlots


def rounded(n: int) -> int:
    return -(-n // ROW_STEP) * ROW_STEP


@pytest.mark.parametrize("num_envs", [1, 3, 16])
def test_slots_hold_every_episode_through_random_loads(num_envs):
    """Each environment's rows stay in place or move with a packing, never mixed with another's; the
    buffer stays within MAX_SLACK of a fresh packing; packings copy amortised O(1) rows per loaded row."""
    rng = np.random.default_rng(num_envs)
    slots = RowSlots(num_envs, "cpu")
    data = torch.zeros(0, dtype=torch.long)  # row i of episode k holds k * 10_000 + i
    episode = np.full(num_envs, -1)
    loaded = moved = packings = 0
    for k in range(400):
        envs = sorted(rng.choice(num_envs, size=rng.integers(1, num_envs + 1), replace=False).tolist())
        big = rng.random() < 0.5
        sizes = rng.integers(500, 4000, len(envs)) if big else rng.integers(1, 400, len(envs))
        relocation = slots.place(envs, sizes.tolist())
        if relocation is not None:
            packings += 1
            moved += sum(n for _, _, n in relocation.moves)
            data = relocation.apply(data, -1)
        assert data.shape[0] == slots.owner.shape[0] == slots.capacity
        for e, n in zip(envs, sizes.tolist(), strict=True):
            episode[e] = k * num_envs + e
            data[slots.slot(e)] = episode[e] * 10_000 + torch.arange(n)
            loaded += n
        for e in range(num_envs):  # every episode's rows intact, owned by it alone
            rows = slots.slot(e)
            assert rows.stop - rows.start == slots.n[e]
            assert torch.equal(data[rows], episode[e] * 10_000 + torch.arange(slots.n[e]))
            assert int((slots.owner == e).sum()) == slots.n[e]
            assert bool((slots.owner[rows] == e).all())
            assert torch.equal(slots.base_t[e], torch.tensor(slots.base[e]))
        assert slots.capacity <= MAX_SLACK * sum(rounded(int(n)) for n in slots.n)
    assert packings > 1
    assert moved <= 2 * loaded


def test_a_slide_that_fits_stays_in_its_slot():
    slots = RowSlots(2, "cpu")
    assert slots.place([0, 1], [100, 300]) is not None  # first placement packs
    base = slots.base.copy()
    assert slots.place([1], [250]) is None  # fits its 320-row slot
    np.testing.assert_array_equal(slots.base, base)
    assert int((slots.owner == 1).sum()) == 250
    assert slots.place([0], [200]) is None  # a new slot in the headroom; the old one is dead
    assert slots.base[0] == 448 and int((slots.owner == 0).sum()) == 200
    assert not bool((slots.owner[:128] >= 0).any())


def test_one_environment_holds_its_slide_alone():
    """With one environment a packing moves nothing, so no headroom: the buffer is the slide rounded up,
    kept for smaller slides until it holds more than MAX_SLACK times what they need."""
    slots = RowSlots(1, "cpu")
    for n, held in [(100, 128), (300, 320), (200, 320), (90, 320), (1000, 1024), (100, 128)]:
        slots.place([0], [n])
        assert slots.capacity == held, (n, slots.capacity)
