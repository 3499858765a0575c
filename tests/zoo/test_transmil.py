from __future__ import annotations

import inspect
import math

import torch

import zoo.models.transmil as transmil_module
from zoo.models.transmil import TransMIL, TransMILConfig
from zoo.nn.nystrom import NystromAttention, iterative_pinv
from zoo.registry import create_model
from zoo.train import fit


def _small(**kw) -> TransMIL:
    torch.manual_seed(0)
    cfg = {"in_dim": 16, "dim": 32, "heads": 4, "num_landmarks": 8, "residual_kernel": 5, **kw}
    return TransMIL(TransMILConfig(**cfg))


def test_iterative_pinv_matches_linalg():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(3, 12, 12), dim=-1).double()
    torch.testing.assert_close(iterative_pinv(a, 20), torch.linalg.pinv(a), atol=1e-6, rtol=1e-5)
    # per-matrix scaling: one matrix's result does not depend on the others in the batch
    torch.testing.assert_close(iterative_pinv(a[:1], 6), iterative_pinv(a, 6)[:1])


def test_nystrom_exact_below_landmarks_and_close_above():
    torch.manual_seed(0)
    x = torch.randn(2, 120, 32) * 0.5
    exact = NystromAttention(32, heads=4, dim_head=8, num_landmarks=512, residual_kernel=0).eval()
    approx = NystromAttention(
        32, heads=4, dim_head=8, num_landmarks=40, pinv_iterations=12, residual_kernel=0
    )
    approx.load_state_dict(exact.state_dict())
    approx.eval()
    out_e, row_e = exact(x, return_attention_row=0)
    q, k, v = exact.to_qkv(x).view(2, 120, 3, 4, 8).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1)
    torch.testing.assert_close(row_e, ref[..., 0, :])
    torch.testing.assert_close(out_e, exact.to_out((ref @ v).transpose(1, 2).reshape(2, 120, 32)))
    out_a, row_a = approx(x, return_attention_row=0)
    assert ((out_a - out_e).norm() / out_e.norm()) < 0.1
    assert ((row_a - row_e).abs().sum(-1) < 0.2).all()  # L1 distance of the attention rows
    # 121 tokens with 40 landmarks: segments of 4, 31 landmarks, 3 front-padding tokens
    out_odd, _ = approx(torch.randn(1, 121, 32))
    assert out_odd.shape == (1, 121, 32) and torch.isfinite(out_odd).all()


def test_shapes_and_attention_distribution():
    model = _small(num_classes=3).eval()
    out = model(torch.randn(1, 30, 16))
    assert out["logits"].shape == (1, 3) and out["attention"].shape == (1, 30)
    assert torch.all(out["attention"] >= 0)
    torch.testing.assert_close(out["attention"].sum(), torch.tensor(1.0))
    assert model(torch.randn(1, 1, 16))["logits"].shape == (1, 3)  # a one-instance bag


def test_attention_maps_square_padding_back_to_inputs():
    model = _small(num_landmarks=64).eval()  # exact attention, so the row is a softmax
    x = torch.randn(5, 16)  # side 3: tokens 5..8 repeat inputs 0..3
    h = model.projection(x)
    tokens = torch.cat([model.cls_token[0], h, h[:4]])[None]
    tokens, _ = model.layer1(tokens)
    tokens = model.ppeg(tokens, 3)
    _, row = model.layer2(tokens, return_cls_attention=True)
    r = row[0].mean(0)[1:]
    expected = r[:5].clone()
    expected[:4] += r[5:]
    expected = expected / expected.sum()
    torch.testing.assert_close(model(x[None])["attention"][0], expected)


def test_padding_does_not_change_outputs(check_padding_invariance):
    check_padding_invariance(_small(num_classes=3), 16)


def test_cpu_safe_source():
    assert ".cuda(" not in inspect.getsource(transmil_module)


def test_gradients_reach_every_parameter():
    model = _small().train()
    out = model(torch.randn(2, 20, 16), mask=torch.ones(2, 20, dtype=torch.bool))
    out["logits"].sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_transmil_learns_tiny_task(tiny_dataset):
    torch.manual_seed(0)
    model = create_model("transmil", in_dim=32, dim=64, heads=4, num_landmarks=16)
    result = fit(model, tiny_dataset, epochs=10, lr=5e-4, progress=False)
    assert result.test_metrics["auc"] >= 0.85
