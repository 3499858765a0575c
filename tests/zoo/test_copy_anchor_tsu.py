"""examples/copy_anchor_tsu.py: the copy-V(a) state update of docs/synth-c16.md is exact and keeps the similarity settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import zoo
from zoo.model_folder import save_pretrained

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "copy_anchor_tsu.py"


def test_copy_anchor_tsu_returns_v_a_with_the_trained_tsus_settings(tmp_path):
    spec = importlib.util.spec_from_file_location("copy_anchor_tsu", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)
    trained = zoo.create_model("tsu", in_dim=16, tau=0.8, residual=False)
    save_pretrained(trained, tmp_path / "trained")
    copy = example.copy_anchor_tsu(str(tmp_path / "trained"))
    assert copy.config.tau == 0.8 and copy.config.residual
    v_a, s_a, s_i = torch.randn(3, 5, 16).unbind(0)
    torch.testing.assert_close(copy(v_a, s_a, s_i), v_a, rtol=0, atol=0)
    assert not torch.allclose(trained(v_a, s_a, s_i), v_a)
