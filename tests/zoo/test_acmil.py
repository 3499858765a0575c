from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.models.acmil import ACMIL, ACMILConfig
from zoo.nn.attention import NEG_INF
from zoo.registry import create_model
from zoo.train import fit


def test_shapes_batched_multiclass():
    model = create_model("acmil", in_dim=24, num_classes=3)
    assert isinstance(model, ACMIL) and model.config.n_token == 5
    out = model.eval()(torch.randn(1, 30, 24))
    assert out["logits"].shape == (1, 3) and out["attention"].shape == (1, 30)
    assert out["branch_attention"].shape == (1, 5, 30) and out["branch_logits"].shape == (1, 5, 3)
    out = model(torch.randn(2, 30, 24))
    assert out["logits"].shape == (2, 3) and out["attention"].shape == (2, 30)
    torch.testing.assert_close(out["attention"], out["branch_attention"].mean(1))
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(2))


def test_padding_does_not_change_outputs(check_padding_invariance):
    torch.manual_seed(0)
    check_padding_invariance(ACMIL(ACMILConfig(in_dim=16, num_classes=3, hidden=32, attn_dim=16)), 16)


def test_stkim_only_in_training():
    torch.manual_seed(0)
    model = ACMIL(ACMILConfig(in_dim=16, hidden=32, n_token=3, n_masked_patch=10, mask_drop=0.6))
    x = torch.randn(1, 40, 16)
    model.train()
    logits = model(x)["attention_logits"]
    assert ((logits == NEG_INF).sum(-1) == 6).all()  # int(10 * 0.6) hidden per branch
    model.eval()
    assert not (model(x)["attention_logits"] == NEG_INF).any()


def test_loss_terms():
    torch.manual_seed(0)
    model = ACMIL(ACMILConfig(in_dim=16, hidden=32, n_token=4)).eval()
    batch = {"features": torch.randn(1, 25, 16), "mask": torch.ones(1, 25, dtype=torch.bool)}
    batch["coords"], batch["label"] = torch.zeros(1, 25, 2), torch.tensor([1])
    terms = model.loss(batch)
    out = model.predict(batch)
    ce = F.cross_entropy(out["logits"], batch["label"])
    branch = torch.stack(
        [F.cross_entropy(out["branch_logits"][:, m], batch["label"]) for m in range(4)]
    ).mean()
    a = F.normalize(out["branch_attention"][0], dim=-1)
    sim = a @ a.T
    div = (sim.sum() - sim.diagonal().sum()) / (4 * 3)
    torch.testing.assert_close(terms["ce"], ce)
    torch.testing.assert_close(terms["branch_ce"], branch)
    torch.testing.assert_close(terms["diversity"], div, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(terms["loss"], ce + branch + div)
    terms["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_single_token_is_plain_ce():
    model = ACMIL(ACMILConfig(in_dim=8, hidden=16, n_token=1, n_masked_patch=0))
    b = {"features": torch.randn(1, 10, 8), "mask": torch.ones(1, 10, dtype=torch.bool)}
    b["coords"], b["label"] = torch.zeros(1, 10, 2), torch.tensor([0])
    terms = model.loss(b)
    assert terms["branch_ce"] == 0 and terms["diversity"] == 0
    torch.testing.assert_close(terms["loss"], terms["ce"])


def test_bad_config():
    with pytest.raises(ValueError, match="n_token"):
        ACMIL(ACMILConfig(n_token=0))


def test_acmil_learns_tiny_task(tiny_dataset):
    torch.manual_seed(0)
    model = create_model("acmil", in_dim=32)
    result = fit(model, tiny_dataset, epochs=10, lr=1e-3, progress=False)
    assert result.test_metrics["auc"] >= 0.9
    assert result.val_metrics["accuracy"] >= 5 / 6
