"""TSU network f_S: architecture, input order, broadcasting, similar set."""

from __future__ import annotations

import pytest
import torch

from wsigym.data.memory import MemoryDataset
from wsigym.data.random_dataset import random_dataset
from zoo.models.hafed import HAFED, HAFEDConfig
from zoo.models.tsu import TSU, TSUConfig, similar_set
from zoo.registry import create_model, model_from_config_dict
from zoo.train_tsu import fit_tsu


def test_defaults_and_parameter_count():
    model = create_model("tsu")
    cfg = model.config
    assert (cfg.in_dim, cfg.hidden, cfg.tau, cfg.input_order, cfg.similarity) == (
        384,
        None,
        0.95,
        "v_a,s_a,s_i",
        "abs_cosine",
    )
    # SASHA's FGlobal (modules/fglobal_mlp.py): fc1 -> GELU -> fc2 -> LayerNorm, 1152 -> 768 -> 384
    kinds = [type(m).__name__ for m in model.mlp]
    assert kinds == ["Linear", "GELU", "Linear", "LayerNorm"] and not cfg.residual
    assert (model.mlp[0].in_features, model.mlp[0].out_features, model.mlp[2].out_features) == (
        1152,
        768,
        384,
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


# ---------------------------------------------------------------- fit_tsu on a small structured dataset


def _mapped_dataset(n: int = 48) -> MemoryDataset:
    """12 slides whose high-res rows are a fixed nonlinear map of the low-res rows: V(i) = g(Z(i)).

    Z rows come in tight clusters (so similar sets exist at tau), each child of a patch equals
    ``g(Z(i))`` (so HAFED's aggregate returns exactly it, whatever its weights). ``f_S`` can learn ``g``;
    neither leaving ``Z(i)`` nor copying ``V(a)`` can. Split 8 / 2 / 2.
    """
    return random_dataset(
        12, n, 8, children=4, clusters=6, cluster_noise=0.3, children_from="map", split=(2, 2), name="memory"
    )


def test_fit_tsu_beats_both_baselines():
    data = _mapped_dataset()
    torch.manual_seed(0)
    hafed = HAFED(HAFEDConfig(in_dim=8, attn_dim=8, n_token_2=2))
    res = fit_tsu(hafed, data, tau=0.9, epochs=60, lr=1e-2, anchors_per_slide=8, progress=False)
    b = res.baselines
    assert b["val_pairs"] > 50 and b["test_pairs"] > 50
    assert res.val_mse == b["val_tsu"]
    for split in ("val", "test"):
        assert b[f"{split}_tsu"] < 0.6 * b[f"{split}_copy_anchor"], b
        assert b[f"{split}_tsu"] < 0.1 * b[f"{split}_no_update"], b
    assert res.history[res.best_epoch]["val_mse"] == pytest.approx(res.val_mse, rel=1e-5)
    assert res.model.config.tau == 0.9 and res.model.config.similarity == "abs_cosine"  # SASHA's default
    assert not res.model.training


def test_fit_tsu_untrained_does_not_beat_copy_anchor():
    """The comparison can fail: one tiny step at a tiny lr leaves f_S worse than copying the anchor."""
    data = _mapped_dataset()
    hafed = HAFED(HAFEDConfig(in_dim=8, attn_dim=8))
    res = fit_tsu(hafed, data, tau=0.9, epochs=1, lr=1e-7, anchors_per_slide=1, progress=False)
    assert res.baselines["val_tsu"] > res.baselines["val_copy_anchor"]


def test_fit_tsu_is_deterministic_and_checks_tau():
    data = _mapped_dataset(n=24)
    hafed = HAFED(HAFEDConfig(in_dim=8, attn_dim=8))
    kw = {"tau": 0.9, "epochs": 2, "lr": 1e-3, "progress": False, "seed": 3}
    r1, r2 = fit_tsu(hafed, data, **kw), fit_tsu(hafed, data, **kw)
    assert r1.baselines == r2.baselines
    for k, v in r1.model.state_dict().items():
        assert torch.equal(v, r2.model.state_dict()[k])
    with pytest.raises(ValueError, match="lower tau"):
        fit_tsu(hafed, data, tau=0.99999, epochs=1, progress=False)


def test_train_and_save_tsu_round_trip(tmp_path):
    import json

    import zoo
    from zoo.train_tsu import train_and_save_tsu

    data = _mapped_dataset(n=24)
    hafed = HAFED(HAFEDConfig(in_dim=8, attn_dim=8))
    hafed.save_pretrained(tmp_path / "hafed")
    out = train_and_save_tsu(tmp_path / "hafed", data, tmp_path / "tsu", tau=0.9, epochs=2, progress=False)
    loaded = zoo.load(str(out))
    assert isinstance(loaded, TSU) and loaded.config.tau == 0.9
    record = json.loads((out / "metrics.json").read_text())
    assert record["architecture"] == "tsu" and record["recipe"]["tau"] == 0.9
    assert record["val_mse"] == pytest.approx(record["mse"]["val_tsu"])
    assert {"val_no_update", "val_copy_anchor", "test_tsu"} <= set(record["mse"])
    assert (out / "README.md").exists()
