"""HAFED: shapes, masking invariance, row-wise level-2 logits, pooling maths, STKIM, loss terms."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.models.hafed import HAFED, HAFEDConfig
from zoo.registry import create_model, model_from_config_dict

D, K, C = 16, 4, 2


def small(**overrides) -> HAFED:
    torch.manual_seed(0)
    cfg = {"in_dim": D, "attn_dim": 8, "n_token_1": 2, "n_token_2": 3, "n_masked_1": 3, "n_masked_2": 4}
    cfg.update(overrides)
    return HAFED(HAFEDConfig(**cfg))


def test_defaults_follow_reference():
    cfg = HAFEDConfig()
    assert (cfg.in_dim, cfg.attn_dim, cfg.n_token_1, cfg.n_token_2) == (384, 128, 1, 5)
    assert (cfg.n_masked_1, cfg.n_masked_2, cfg.mask_drop, cfg.dropout) == (10, 20, 0.24, 0.0)
    assert HAFED.needs_hr and HAFED.input_view == "hier" and HAFED.family == "hafed"
    model = create_model("hafed")
    again = model_from_config_dict(model.config_dict())
    assert again.config == model.config


def test_shapes_batched_and_unbatched():
    model = small().eval()
    u = torch.randn(2, 7, K, D)
    out = model(u)
    assert out["logits"].shape == (2, C)
    assert out["attention"].shape == (2, 7)
    assert out["branch_logits"].shape == (2, 3, C)
    assert out["level1_attention"].shape == (2, 7, K)
    assert out["level1_branch_attention"].shape == (2, 7, 2, K)
    assert model.aggregate(u).shape == (2, 7, D)
    assert model.attention_logits(torch.randn(2, 7, D)).shape == (2, 3, 7)
    single = model(u[1:2])
    assert single["logits"].shape == (1, C) and single["attention"].shape == (1, 7)
    torch.testing.assert_close(single["logits"][0], out["logits"][1])
    assert model.aggregate(u[0]).shape == (7, D)
    with pytest.raises(ValueError, match=r"HAFED\.classify takes batched input \(B, N, D\), got \(7, 16\)"):
        model.classify(torch.randn(7, D))
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(2))
    torch.testing.assert_close(out["level1_attention"].sum(-1), torch.ones(2, 7))


def test_padding_rows_and_children_do_not_change_outputs():
    model = small().eval()
    u = torch.randn(5, K, D)
    child_mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1], [1, 1, 1, 0]]).bool()
    ref = {k: v[0] for k, v in model(u[None], child_mask=child_mask[None]).items()}
    # garbage in invalid children
    u2 = u.clone()
    u2[~child_mask] = 1e3 * torch.randn(int((~child_mask).sum()), D)
    torch.testing.assert_close(model(u2[None], child_mask=child_mask[None])["logits"][0], ref["logits"])
    assert (ref["level1_attention"][~child_mask] == 0).all()
    # padded patches (batched with a longer slide)
    pad = torch.randn(3, K, D) * 50
    big = torch.cat([u2, pad])[None]
    mask = torch.tensor([[True] * 5 + [False] * 3])
    cm = torch.cat([child_mask, torch.ones(3, K, dtype=torch.bool)])[None]
    out = model(big, mask=mask, child_mask=cm)
    torch.testing.assert_close(out["logits"][0], ref["logits"])
    torch.testing.assert_close(out["attention"][0, :5], ref["attention"])
    assert (out["attention"][0, 5:] == 0).all()
    torch.testing.assert_close(out["branch_logits"][0], ref["branch_logits"])


def test_attention_logits_are_row_wise():
    model = small().eval()
    s = torch.randn(2, 6, D)
    a = model.attention_logits(s)
    s2 = s.clone()
    s2[1, 3] = torch.randn(D)
    a2 = model.attention_logits(s2)
    changed = (a2 != a).any(dim=1)  # (B, N)
    expected = torch.zeros(2, 6, dtype=torch.bool)
    expected[1, 3] = True
    assert torch.equal(changed, expected)


def test_classify_matches_manual_pooling():
    model = small().eval()
    s = torch.randn(2, 6, D)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = model.classify(s, mask)
    a = model.attention_logits(s)
    for b in range(2):
        n = int(mask[b].sum())
        w = torch.softmax(a[b, :, :n], dim=-1)  # (M, n)
        att = w.mean(0)
        torch.testing.assert_close(out["attention"][b, :n], att)
        pooled = att @ s[b, :n]
        torch.testing.assert_close(out["logits"][b], model.slide_head(pooled))
        for m, head in enumerate(model.branch_heads):
            torch.testing.assert_close(out["branch_logits"][b, m], head(w[m] @ s[b, :n]))


def test_aggregate_is_level1_weighted_sum():
    model = small().eval()
    u = torch.randn(3, 5, K, D)
    cm = torch.rand(3, 5, K) > 0.3
    cm[..., 0] = True
    v = model.aggregate(u, cm)
    logits = model.level1_attention(u)  # (3, 5, K1, k)
    w = torch.softmax(logits.masked_fill(~cm[..., None, :], float("-inf")), -1).mean(-2)
    torch.testing.assert_close(v, (w[..., None] * u).sum(-2))


def test_stkim_only_in_training():
    model = small(n_token_2=1, n_masked_2=4, mask_drop=0.5, n_masked_1=2, n_token_1=1)
    u = torch.randn(1, 12, K, D)
    model.eval()
    a = model(u)
    b = model(u)
    torch.testing.assert_close(a["logits"], b["logits"])
    # eval attention is the plain softmax of the logits
    s = model.aggregate(u)
    torch.testing.assert_close(a["attention"], torch.softmax(model.attention_logits(s)[:, 0], -1))
    model.train()
    torch.manual_seed(1)
    tr = model(u)
    # in training 2 of the 4 top patches of the single branch are hidden: exactly 0 weight (-1e9 logit)
    assert int((tr["attention"] == 0).sum()) == 2
    assert int((tr["level1_attention"] == 0).sum()) == 12  # 1 of 2 top children per patch
    top4 = model.attention_logits(tr["state"])[0, 0].topk(4).indices
    assert set((tr["attention"][0] == 0).nonzero().squeeze(-1).tolist()) <= set(top4.tolist())


def test_loss_terms_present_and_finite():
    model = small().train()
    u = torch.randn(2, 9, K, D)
    batch = {
        "hr_features": u,
        "hr_mask": torch.ones(2, 9, K, dtype=torch.bool),
        "mask": torch.tensor([[True] * 9, [True] * 6 + [False] * 3]),
        "features": u.mean(2),
        "coords": torch.zeros(2, 9, 2),
        "label": torch.tensor([0, 1]),
    }
    out = model.loss(batch)
    for key in ("loss", "ce", "ce_branch", "div_1", "div_2"):
        assert key in out and torch.isfinite(out[key]), key
    assert out["div_1"] > 0 and out["div_2"] > 0
    total = out["ce"] + out["ce_branch"] + out["div_1"] + out["div_2"]
    torch.testing.assert_close(out["loss"], total)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    single = small(n_token_1=1, n_token_2=1).train().loss(batch)
    assert "ce_branch" not in single and float(single["div_1"]) == 0.0 and float(single["div_2"]) == 0.0
    assert math.isfinite(single["loss"].item())


def test_bad_shapes_raise():
    model = small()
    with pytest.raises(ValueError, match=r"HAFED takes batched input \(B, N, k, D\)"):
        model(torch.randn(4, D))
    with pytest.raises(ValueError, match="mask"):
        model.classify(torch.randn(2, 5, D), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_token_2"):
        HAFED(HAFEDConfig(n_token_2=0))


def test_div_2_rule_sasha_code_is_the_official_patch_term():
    """``div_2_rule="sasha_code"`` equals SASHA step 3's loop, transcribed: the cosine between columns
    ``i < j < M`` of the ``(M, N)`` level-2 attention (patches, not branches), over the pairs."""
    torch.manual_seed(1)
    model = small().eval()
    u = torch.randn(1, 9, K, D)
    batch = {
        "hr_features": u,
        "hr_mask": torch.ones(1, 9, K, dtype=torch.bool),
        "mask": torch.ones(1, 9, dtype=torch.bool),
        "features": u.mean(2),
        "coords": torch.zeros(1, 9, 2),
        "label": torch.tensor([1]),
    }
    intended = model.loss(batch)
    model.config.div_2_rule = "sasha_code"
    official = model.loss(batch)
    attn_2 = model.predict(batch)["branch_attention"][0]  # (M, N), softmax over patches
    m = attn_2.shape[0]
    expected = torch.tensor(0.0)
    for i in range(m):
        for j in range(i + 1, m):
            expected += torch.cosine_similarity(attn_2[:, i], attn_2[:, j], dim=-1).mean() / (m * (m - 1) / 2)
    torch.testing.assert_close(official["div_2"], expected)
    assert not torch.allclose(official["div_2"], intended["div_2"])
    torch.testing.assert_close(official["div_1"], intended["div_1"])
    with pytest.raises(ValueError, match="div_2_rule"):
        small(div_2_rule="patches")
