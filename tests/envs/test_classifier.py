"""The incremental HAFED classifier equals a full ``classify`` after arbitrary row changes."""

from __future__ import annotations

import torch

import zoo
from wsigym.envs.classifier import IncrementalAttentionClassifier
from wsigym.envs.state_update import StateChange, ZoomBatchState


def packed(state, n):
    """The padded ``state (B, P, d)`` with ``n[b]`` real rows as the engine's packed state."""
    return ZoomBatchState.of_slides([state[e, :k] for e, k in enumerate(n.tolist())])


def full(hafed, state, valid):
    with torch.no_grad():
        out = hafed.classify(state, valid)
    return out["logits"], out["attention"]


def change_rows(state, st, env, row, new):
    """Write ``new`` into the padded ``state`` and the packed ``st``; the change as a rule reports it."""
    old = state[env, row].clone()
    state[env, row] = new
    st.state[st.slots.flat(env, row)] = new
    return StateChange(
        env=env, row=row, old=old, new=new, tsu_count=torch.zeros(state.shape[0], dtype=torch.long)
    )


def test_incremental_equals_full_over_an_episode():
    torch.manual_seed(0)
    b, p, d = 3, 50, 24
    hafed = zoo.create_model("hafed", in_dim=d, n_token_2=4, num_classes=3).eval()
    state = torch.randn(b, p, d)
    n = torch.tensor([50, 31, 12])
    valid = torch.arange(p)[None] < n[:, None]
    state[~valid] = 0
    st = packed(state, n)
    clf = IncrementalAttentionClassifier(hafed, b, "cpu")
    clf.refresh(torch.arange(b), st)
    logits, att = full(hafed, state, valid)
    torch.testing.assert_close(clf.logits(), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clf.attention(st, p), att, rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    for step in range(60):
        envs, rows = [], []
        for e in range(b):
            k = int(torch.randint(0, 5, (1,), generator=g))
            picked = torch.randperm(int(n[e]), generator=g)[:k]
            envs += [e] * len(picked)
            rows += picked.tolist()
        env_t, row_t = torch.tensor(envs, dtype=torch.long), torch.tensor(rows, dtype=torch.long)
        scale = 8.0 if step % 7 == 0 else 1.0  # occasionally large rows: big logit jumps (shift rescaling)
        new = scale * torch.randn(len(envs), d, generator=g)
        clf.update(change_rows(state, st, env_t, row_t, new), st)
        logits, att = full(hafed, state, valid)
        torch.testing.assert_close(clf.logits(), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(clf.attention(st, p), att, rtol=1e-4, atol=1e-6)


def test_dominant_row_removed_triggers_exact_refresh():
    torch.manual_seed(2)
    p, d = 20, 8
    hafed = zoo.create_model("hafed", in_dim=d, n_token_2=2).eval()
    with torch.no_grad():  # attention logit = 40 * x[0]: a row with a large first entry dominates
        hafed.level2_attention.tanh_branch.weight.zero_()
        hafed.level2_attention.tanh_branch.weight[:, 0] = 1.0
        hafed.level2_attention.tanh_branch.bias.zero_()
        hafed.level2_attention.gate_branch.weight.zero_()
        hafed.level2_attention.gate_branch.bias.fill_(20.0)
        hafed.level2_attention.score.weight.fill_(40.0 / hafed.config.attn_dim)
        hafed.level2_attention.score.bias.zero_()
    state = torch.randn(1, p, d) * 0.1
    state[0, 3, 0] = 5.0  # dominant row: logit ~ 40, the others ~ 0 -> weights ~ e^-40
    valid = torch.ones(1, p, dtype=torch.bool)
    st = packed(state, torch.tensor([p]))
    clf = IncrementalAttentionClassifier(hafed, 1, "cpu")
    clf.refresh(torch.arange(1), st)
    new = torch.randn(1, d) * 0.1
    clf.update(change_rows(state, st, torch.tensor([0]), torch.tensor([3]), new), st)
    logits, att = full(hafed, state, valid)
    torch.testing.assert_close(clf.logits(), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clf.attention(st, p), att, rtol=1e-4, atol=1e-6)


def test_dense_changes_are_recomputed_and_mix_with_sparse_ones():
    """A step that changes at least half of an environment's rows (the global rule) recomputes that
    environment's sums; the others in the same change stay incremental; all equal a full classify."""
    torch.manual_seed(3)
    b, p, d = 3, 40, 16
    hafed = zoo.create_model("hafed", in_dim=d, n_token_2=3).eval()
    n = torch.tensor([40, 25, 9])
    valid = torch.arange(p)[None] < n[:, None]
    state = torch.randn(b, p, d) * valid[..., None]
    st = packed(state, n)
    clf = IncrementalAttentionClassifier(hafed, b, "cpu")
    clf.refresh(torch.arange(b), st)
    recomputed = []
    refresh = clf.refresh
    clf.refresh = lambda envs, *a, **k: (recomputed.append(envs.tolist()), refresh(envs, *a, **k))[1]
    g = torch.Generator().manual_seed(4)
    for _ in range(10):
        rows = [torch.arange(40), torch.randperm(25, generator=g)[:3], torch.randperm(9, generator=g)[:5]]
        env_t = torch.cat([torch.full((len(r),), e) for e, r in enumerate(rows)])
        row_t = torch.cat(rows)
        new = torch.randn(len(row_t), d, generator=g)
        clf.update(change_rows(state, st, env_t, row_t, new), st)
        logits, att = full(hafed, state, valid)
        torch.testing.assert_close(clf.logits(), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(clf.attention(st, p), att, rtol=1e-4, atol=1e-6)
    assert recomputed and all(
        envs == [0, 2] for envs in recomputed
    )  # env 1 changed 3 of 25 rows: incremental
