from __future__ import annotations

import pytest
import torch

from zoo.models.abmil import ABMIL, ABMILConfig
from zoo.registry import create_model


def test_shapes_batched_only():
    model = create_model("abmil", in_dim=24, num_classes=4).eval()
    with pytest.raises(ValueError, match=r"ABMIL takes batched input \(B, N, D\), got \(13, 24\)"):
        model(torch.randn(13, 24))
    out = model(torch.randn(3, 13, 24))
    assert out["logits"].shape == (3, 4) and out["embedding"].shape == (3, 128)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(3))


def test_padding_does_not_change_outputs(check_padding_invariance):
    torch.manual_seed(0)
    check_padding_invariance(ABMIL(ABMILConfig(in_dim=16, num_classes=3, hidden=32, attn_dim=16)), 16)


def test_hr_view_reads_flattened_children():
    torch.manual_seed(0)
    model = ABMIL(ABMILConfig(in_dim=8, view="hr")).eval()
    batch = {
        "features": torch.randn(1, 3, 8),
        "mask": torch.tensor([[True, True, False]]),
        "coords": torch.zeros(1, 3, 2),
        "hr_features": torch.randn(1, 3, 4, 8),
        "hr_mask": torch.ones(1, 3, 4, dtype=torch.bool),
    }
    out = model.predict(batch)
    assert out["attention"].shape == (1, 12)
    assert torch.all(out["attention"][0, 8:] == 0)  # children of the padded parent
    with pytest.raises(KeyError, match="hr_features"):
        model.predict({k: v for k, v in batch.items() if not k.startswith("hr")})
    with pytest.raises(ValueError, match="view"):
        ABMIL(ABMILConfig(view="hier"))


def test_default_loss_is_cross_entropy():
    model = create_model("abmil", in_dim=8)
    batch = {"features": torch.randn(1, 5, 8), "mask": torch.ones(1, 5, dtype=torch.bool)}
    batch["coords"], batch["label"] = torch.zeros(1, 5, 2), torch.tensor([1])
    terms = model.loss(batch)
    torch.testing.assert_close(
        terms["loss"], torch.nn.functional.cross_entropy(terms["logits"], batch["label"])
    )
