from __future__ import annotations

import math

import pytest
import torch

from zoo.models.asmil import ASMIL, ASMILConfig
from zoo.nn.attention import masked_softmax, sigmax
from zoo.nn.cross_attention import QueryCrossAttention
from zoo.registry import create_model
from zoo.train import RECIPES, fit


def _small(**kw) -> ASMIL:
    torch.manual_seed(0)
    cfg = {"in_dim": 16, "hidden": 32, "n_token": 4, "heads": 4, "token_drop": 2, **kw}
    return ASMIL(ASMILConfig(**cfg))


def _batch(n: int = 20, d: int = 16, label: int = 1) -> dict[str, torch.Tensor]:
    return {
        "features": torch.randn(1, n, d),
        "mask": torch.ones(1, n, dtype=torch.bool),
        "coords": torch.zeros(1, n, 2),
        "label": torch.tensor([label]),
    }


def test_defaults_and_shapes():
    model = create_model("asmil", num_classes=3)
    cfg = model.config
    assert (cfg.n_token, cfg.heads, cfg.token_drop, cfg.dropout, cfg.ema, cfg.temperature) == (
        8,
        8,
        4,
        0.1,
        0.999,
        0.2,
    )
    assert RECIPES["asmil"]["grad_clip"] == 5.0
    out = model.eval()(torch.randn(1, 50, 384))
    assert out["logits"].shape == (1, 3) and out["attention"].shape == (1, 50)
    assert out["branch_scores"].shape == (1, 8, 8, 50) and out["kept_tokens"].all()
    out = model.train()(torch.randn(2, 50, 384))
    assert out["logits"].shape == (2, 3)
    assert (out["kept_tokens"].sum(-1) == 4).all()  # token_drop 4 of 8 in training


def test_cross_attention_matches_textbook_form():
    torch.manual_seed(0)
    block = QueryCrossAttention(12, heads=3, n_queries=2).eval()
    q, x = torch.randn(2, 2, 12), torch.randn(2, 7, 12)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    out, scores, _ = block(q, x, mask)
    for t in range(2):
        qq = q[:, t] @ block.w_q[t] + block.b_q[t]  # (B, 12)
        k = x @ block.w_k[t] + block.b_k[t]  # (B, N, 12)
        v = x @ block.w_v[t] + block.b_v[t]
        s = torch.einsum("bhe,bnhe->bhn", qq.view(2, 3, 4), k.view(2, 7, 3, 4)) / math.sqrt(4)
        torch.testing.assert_close(scores[:, :, t], s)
        w = masked_softmax(s, mask[:, None, :])
        o = torch.einsum("bhn,bnhe->bhe", w, v.view(2, 7, 3, 4)).reshape(2, 12)
        torch.testing.assert_close(out[:, t], o @ block.w_o[t] + block.b_o[t])


def test_sigmax():
    x = torch.tensor([[0.0, 1.0, -2.0, 5.0]])
    s = torch.sigmoid(x)
    torch.testing.assert_close(sigmax(x), s / (s.sum() + 1e-8))
    m = torch.tensor([[True, True, False, True]])
    out = sigmax(x, m)
    assert out[0, 2] == 0 and torch.isclose(out.sum(), torch.tensor(1.0))


def test_padding_does_not_change_outputs(check_padding_invariance):
    check_padding_invariance(_small(num_classes=3), 16)


def test_anchor_is_a_copy_and_not_registered():
    model = _small()
    online, anchor = model.state_dict(), model.anchor.state_dict()
    assert online.keys() == anchor.keys()
    assert all(torch.equal(online[k], anchor[k]) for k in online)
    assert not any(p.requires_grad for p in model.anchor.parameters())
    assert model.num_parameters() == sum(p.numel() for p in model.anchor.parameters())
    assert not any(k.startswith("_anchor") or "anchor." in k for k in online)
    model.double()
    assert next(model.anchor.parameters()).dtype == torch.float64


def test_anchor_follows_the_ema_formula_after_a_step():
    model = _small(ema=0.9)
    before = {k: v.clone() for k, v in model.anchor.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    terms = model.train().loss(_batch())
    assert terms["anchor"] > 0 and torch.isclose(terms["loss"], terms["ce"] + terms["anchor"])
    terms["loss"].backward()
    optimizer.step()
    model.after_optimizer_step()
    online, after = model.state_dict(), model.anchor.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed, "the anchor did not change after an optimiser step"
    for k in after:
        torch.testing.assert_close(after[k], 0.9 * before[k] + 0.1 * online[k])
    assert not all(torch.equal(after[k], online[k]) for k in after)


def test_anchor_loss_by_hand():
    model = _small().train()
    batch = _batch(n=9)
    out = model(batch["features"], batch["mask"])
    loss = model.anchor_loss(out["branch_scores"], batch["features"], batch["mask"])
    with torch.no_grad():
        a = model.anchor.branch_scores(batch["features"])
    target = torch.sigmoid(a / 0.2)
    target = target / (target.sum(-1, keepdim=True) + 1e-8)
    expected = -(target * torch.log_softmax(out["branch_scores"], -1)).mean()
    torch.testing.assert_close(loss, expected)


def test_load_state_dict_resets_anchor():
    model, other = _small(), _small()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    model.load_state_dict(other.state_dict())
    assert all(torch.equal(model.anchor.state_dict()[k], v) for k, v in other.state_dict().items())


def test_bad_config():
    with pytest.raises(ValueError, match="token_drop"):
        ASMIL(ASMILConfig(n_token=4, token_drop=4))


def test_asmil_learns_tiny_task(tiny_dataset):
    torch.manual_seed(0)
    model = create_model("asmil", in_dim=32, hidden=32, heads=4, n_token=4, token_drop=2)
    result = fit(model, tiny_dataset, epochs=6, lr=1e-3, progress=False)
    assert result.test_metrics["auc"] >= 0.85
