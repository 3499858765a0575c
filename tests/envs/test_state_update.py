"""Batched update rules: similar sets, at-most-once TSU updates, inactive environments untouched."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import zoo
from wsigym.envs import state_update
from wsigym.envs.state_update import (
    PENDING_SLACK,
    TSURule,
    ZoomBatchState,
    global_update,
    no_update,
    scan_cosines,
    tsu_rows,
    tsu_update,
)


class Padded:
    """A packed :class:`ZoomBatchState` seen as padded ``(B, P, ...)`` tensors (rows past ``N_b`` zero),
    so that tests index ``[env, row]``."""

    def __init__(self, st: ZoomBatchState, p: int) -> None:
        self.st, self.p = st, p

    def _pad(self, packed: torch.Tensor) -> torch.Tensor:
        out = packed.new_zeros(len(self.st.z), self.p, *packed.shape[1:])
        for e in range(len(self.st.z)):
            rows = self.st.slots.slot(e)
            out[e, : rows.stop - rows.start] = packed[rows]
        return out

    def __getattr__(self, name: str) -> torch.Tensor:
        if name == "z":
            z = self.st.z
            return torch.stack([torch.cat([ze, ze.new_zeros(self.p - len(ze), ze.shape[1])]) for ze in z])
        if name == "valid":
            return torch.arange(self.p)[None] < torch.as_tensor(self.st.slots.n)[:, None]
        return self._pad(getattr(self.st, name))


def make_state(
    b=2, p=10, d=6, seed=0, clusters=3, noise=0.05, shrink=3, pending=False, dtype=torch.float32
) -> ZoomBatchState:
    """``b`` slides of ``p - shrink * e`` rows drawn around ``clusters`` centres (``pending``: with the
    engine's :class:`PendingRows` scan)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    z = centres[torch.randint(0, clusters, (b, p), generator=g)] + noise * torch.randn(b, p, d, generator=g)
    return ZoomBatchState.of_slides([z[e, : p - shrink * e].to(dtype) for e in range(b)], pending=pending)


def fake_tsu(v_a, z_a, z_i):
    return v_a + 0.1 * z_a - z_i


@pytest.mark.parametrize("batched", [False, True])
def test_cosine_matches_normalize(batched):
    """Both scans (per slot on CPU, one product over the packed rows on CUDA) give the cosines, 0 for
    environments not scanned."""
    st = make_state(b=3)
    anchors = torch.tensor([2, 4, 1])
    query = torch.stack([st.z[e][a] for e, a in enumerate(anchors.tolist())])
    cos = Padded(st, 10)._pad(scan_cosines(st, query, torch.tensor([0, 2]), batched=batched))
    zn = F.normalize(Padded(st, 10).z, dim=-1)
    want = torch.einsum("bpd,bd->bp", zn, zn[torch.arange(3), anchors])
    want[1] = 0
    torch.testing.assert_close(cos, want)


def test_tsu_rule_batched_and_at_most_once():
    st = make_state()
    view = Padded(st, 10)
    b, p, d = 2, 10, 6
    v = torch.randn(b, p, d)
    zn = F.normalize(view.z, dim=-1)
    counts = torch.zeros(b, p, dtype=torch.long)
    order = [torch.tensor([0, 1]), torch.tensor([5, 2]), torch.tensor([1, 6]), torch.tensor([9, 0])]
    for anchors in order:
        active = torch.tensor([True, anchors[1] < 7])
        before_updated = view.updated
        before = view.state
        envs = active.nonzero().squeeze(-1)
        change = tsu_update(st, anchors, active, v[envs, anchors[envs]], fake_tsu, tau=0.9)
        state, z, updated, visited = view.state, view.z, view.updated, view.visited
        for e in range(b):
            if not active[e]:
                assert torch.equal(state[e], before[e])
                continue
            a = int(anchors[e])
            sim = (zn[e] @ zn[e, a] >= 0.9) & view.valid[e]
            sim[a] = False
            new = sim & ~before_updated[e]
            rows = set(change.row[change.env == e].tolist())
            assert rows == set(new.nonzero().flatten().tolist()) | {a}
            assert int(change.tsu_count[e]) == int(new.sum())
            torch.testing.assert_close(state[e, a], v[e, a])
            for i in new.nonzero().flatten().tolist():
                torch.testing.assert_close(state[e, i], fake_tsu(v[e, a], z[e, a], z[e, i]))
                counts[e, i] += 1
            assert updated[e, a] and visited[e, a]
    assert counts.max() <= 1
    assert not st.updated[st.slots.owner < 0].any()


def test_global_and_none_rules():
    st = make_state()
    b, d = 2, 6
    v = torch.randn(b, d)
    anchors = torch.tensor([3, 1])
    active = torch.ones(b, dtype=torch.bool)
    change = global_update(st, anchors, active, v, fake_tsu)
    view = Padded(st, 10)
    for e in range(b):
        n = int(st.slots.n[e])
        rows = change.row[change.env == e]
        assert set(rows.tolist()) == set(range(n))
        assert view.updated[e, :n].all() and not view.updated[e, n:].any()
        others = rows[rows != anchors[e]]  # f_S of the low-res rows, from the low-res anchor
        torch.testing.assert_close(
            view.state[e, others], fake_tsu(v[e], view.z[e, anchors[e]], view.z[e, others])
        )
    st2 = make_state()
    change = no_update(st2, anchors, active, v)
    assert change.row.tolist() == [3, 1] and change.env.tolist() == [0, 1]
    torch.testing.assert_close(Padded(st2, 10).state[torch.arange(b), anchors], v)
    assert int(st2.updated.sum()) == 2


@pytest.mark.parametrize("residual", [False, True])
def test_factored_tsu_equals_model(residual):
    """The env's row-wise f_S equals the model on every architecture (a residual f_S adds V(a))."""
    torch.manual_seed(3)
    for order in ("v_a,s_a,s_i", "s_i,s_a,v_a"):
        tsu = zoo.create_model("tsu", in_dim=12, input_order=order, residual=residual).eval()
        for p in tsu.parameters():  # the residual's last layer starts at zero: make every term count
            torch.nn.init.normal_(p, std=0.3)
        v_a, z_a = torch.randn(3, 12), torch.randn(3, 12)
        env = torch.tensor([0, 2, 2, 1, 0])
        z_i = torch.randn(5, 12)
        with torch.no_grad():
            torch.testing.assert_close(tsu_rows(tsu, v_a, z_a, env, z_i), tsu(v_a[env], z_a[env], z_i))
    torch.testing.assert_close(tsu_rows(fake_tsu, v_a, z_a, env, z_i), fake_tsu(v_a[env], z_a[env], z_i))


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("rule", [TSURule(anchor="state"), TSURule(anchor="lowres")])
@pytest.mark.parametrize(
    ("absolute_cosine", "dtype"), [(False, torch.float32), (True, torch.float32), (False, torch.float64)]
)
def test_pending_scan_equals_full_scan(rule, absolute_cosine, dtype, batched, monkeypatch):
    """Scanning only the rows not yet updated (PendingRows, the engine's CPU path) gives the full scan's
    rows, states and counts at every step, through re-gathers, zooms of updated rows and inactive envs;
    so does the full scan as one product over the packed rows (``batched``, the CUDA path)."""
    monkeypatch.setattr(state_update, "scan_cosines", functools.partial(scan_cosines, batched=batched))
    b, p, d = 3, 300, 16  # 12 clusters whose cosines spread across tau
    full = make_state(b, p, d, clusters=12, noise=0.25, shrink=7, dtype=dtype)
    fast = make_state(b, p, d, clusters=12, noise=0.25, shrink=7, pending=True, dtype=dtype)
    view = Padded(full, p)
    v = torch.randn(b, p, d, generator=torch.Generator().manual_seed(1), dtype=dtype)
    g = torch.Generator().manual_seed(2)
    gathered = 0
    for t in range(120):
        anchors = torch.stack(
            [
                torch.multinomial((~view.visited[e] & view.valid[e]).float(), 1, generator=g)[0]
                for e in range(b)
            ]
        )
        active = torch.tensor([True, t % 3 != 0, t % 5 != 1])
        env = active.nonzero().squeeze(-1)
        a = rule(full, anchors, active, v[env, anchors[env]], fake_tsu, 0.9, absolute_cosine)
        c = rule(fast, anchors, active, v[env, anchors[env]], fake_tsu, 0.9, absolute_cosine)
        assert torch.equal(a.env, c.env) and torch.equal(a.row, c.row), f"step {t}"
        assert torch.equal(a.tsu_count, c.tsu_count)
        torch.testing.assert_close(c.new, a.new, rtol=0, atol=0)
        assert torch.equal(full.updated, fast.updated) and torch.equal(full.state, fast.state)
        for e in range(b):  # what the scan reads stays within 2 x pending + slack
            rows = fast.pending._rows[e]
            if rows is not None:
                left = int((~fast.updated[fast.slots.slot(e)]).sum())
                assert len(rows) <= 2 * left + PENDING_SLACK + 1
                gathered += len(rows) < int(fast.slots.n[e])
    assert full.updated[full.slots.owner >= 0].float().mean() > 0.8  # the run reached the sparse end
    assert gathered > 0  # and re-gathered along the way
