"""TSU network f_S: architecture, input order, broadcasting, similar set."""

from __future__ import annotations

import pytest
import torch

from zoo.models.tsu import TSU, TSUConfig, similar_set
from zoo.registry import create_model, model_from_config_dict


def test_defaults_and_parameter_count():
    model = create_model("tsu")
    cfg = model.config
    assert (cfg.in_dim, cfg.hidden, cfg.tau, cfg.input_order, cfg.similarity) == (
        384,
        None,
        0.95,
        "v_a,s_a,s_i",
        "cosine",
    )
    lin1, _, lin2, norm = model.mlp
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (1152, 768, 384)
    assert isinstance(norm, torch.nn.LayerNorm)
    assert abs(model.num_parameters() - 1.18e6) < 0.01e6  # SASHA's FGlobal: ~1.18 M
    assert model_from_config_dict(model.config_dict()).config == cfg


def test_order_is_v_a_s_a_s_i():
    torch.manual_seed(0)
    model = TSU(TSUConfig(in_dim=8)).eval()
    v_a, s_a, s_i = torch.randn(3, 5, 8).unbind(0)
    out = model(v_a, s_a, s_i)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out, model.mlp(torch.cat([v_a, s_a, s_i], -1)))
    assert not torch.allclose(out, model.mlp(torch.cat([s_i, s_a, v_a], -1)))
    # the paper's order, as a config choice
    rev = TSU(TSUConfig(in_dim=8, input_order="s_i,s_a,v_a"))
    rev.load_state_dict(model.state_dict())
    torch.testing.assert_close(rev(v_a, s_a, s_i), model.mlp(torch.cat([s_i, s_a, v_a], -1)))


def test_broadcast_one_anchor_many_rows():
    torch.manual_seed(0)
    model = TSU(TSUConfig(in_dim=8, hidden=4)).eval()
    v_a, s_a, s_i = torch.randn(8), torch.randn(8), torch.randn(6, 8)
    out = model(v_a, s_a, s_i)
    assert out.shape == (6, 8)
    torch.testing.assert_close(out[2], model(v_a, s_a, s_i[2]))
    # LayerNorm output: zero mean, unit variance per row (default affine init)
    torch.testing.assert_close(out.mean(-1), torch.zeros(6), atol=1e-5, rtol=0)


def test_bad_config_and_inputs_raise():
    with pytest.raises(ValueError, match="input_order"):
        TSU(TSUConfig(input_order="v_a,s_a"))
    with pytest.raises(ValueError, match="similarity"):
        TSU(TSUConfig(similarity="l2"))
    model = TSU(TSUConfig(in_dim=8))
    with pytest.raises(ValueError, match="s_i"):
        model(torch.randn(8), torch.randn(8), torch.randn(3, 7))


def test_similar_set_signed_and_absolute():
    z = torch.tensor([[1.0, 0.0], [2.0, 0.01], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert similar_set(z, 0, 0.95).tolist() == [1, 4]
    assert similar_set(z, 0, 0.95, "abs_cosine").tolist() == [1, 2, 4]
