"""MambaBlock: mamba_ssm.Mamba's parameter names/shapes/init, causality, backends, conditioning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.nn.mamba import MambaBlock
from zoo.nn.scan import mamba_ssm_available

# the state dict of mamba_ssm.Mamba(d_model=32) (d_inner 64, d_state 16, d_conv 4, dt_rank 2)
MAMBA_SSM_KEYS = {
    "A_log": (64, 16),
    "D": (64,),
    "in_proj.weight": (128, 32),
    "conv1d.weight": (64, 1, 4),
    "conv1d.bias": (64,),
    "x_proj.weight": (2 + 2 * 16, 64),
    "dt_proj.weight": (64, 2),
    "dt_proj.bias": (64,),
    "out_proj.weight": (32, 64),
}


def test_parameter_names_and_shapes_match_mamba_ssm():
    block = MambaBlock(32)
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == MAMBA_SSM_KEYS
    biased = MambaBlock(32, bias=True, conv_bias=False, dt_rank=4, d_state=8, expand=1)
    keys = set(biased.state_dict())
    assert "in_proj.bias" in keys and "out_proj.bias" in keys and "conv1d.bias" not in keys
    assert biased.x_proj.weight.shape == (4 + 16, 32)


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    block = MambaBlock(48, d_state=8, dt_min=0.001, dt_max=0.1)
    assert block.dt_rank == math.ceil(48 / 16)
    torch.testing.assert_close(block.A_log, torch.log(torch.arange(1, 9.0)).repeat(96, 1))
    assert torch.all(block.D == 1)
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert block.dt_proj.weight.abs().max() <= block.dt_rank**-0.5
    assert block.A_log._no_weight_decay and block.D._no_weight_decay


def test_state_dict_round_trip_strict():
    torch.manual_seed(0)
    a, b = MambaBlock(16), MambaBlock(16)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 11, 16)
    torch.testing.assert_close(a(x), b(x))


def test_causal_and_backends_agree():
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=4)
    x = torch.randn(2, 70, 16)
    y = block(x)
    x2 = x.clone()
    x2[:, 40:] += 5.0
    y2 = block(x2)
    torch.testing.assert_close(y[:, :40], y2[:, :40])
    assert not torch.allclose(y[:, 40:], y2[:, 40:])
    block.backend = "reference"
    torch.testing.assert_close(block(x), y, rtol=1e-5, atol=1e-6)


def test_conditioning_shifts():
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=4)
    x = torch.randn(2, 9, 16)
    base = block(x)
    zeros = block(x, delta_shift=torch.zeros(2, 32), b_shift=torch.zeros(2, 4), c_shift=torch.zeros(2, 4))
    torch.testing.assert_close(zeros, base)
    for kw in (
        {"delta_shift": torch.ones(2, 32)},
        {"b_shift": torch.ones(2, 4)},
        {"c_shift": torch.ones(2, 4)},
    ):
        assert not torch.allclose(block(x, **kw), base)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(not mamba_ssm_available(), reason="needs mamba_ssm")
def test_state_dict_loads_into_mamba_ssm_and_agrees():
    from mamba_ssm import Mamba

    torch.manual_seed(0)
    ours = MambaBlock(32, backend="parallel").cuda()
    theirs = Mamba(32).cuda()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 100, 32, device="cuda")
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-3, atol=1e-3)
