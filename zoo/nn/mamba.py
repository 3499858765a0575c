r"""Mamba-1 mixer block with ``mamba_ssm.Mamba``'s parameter names, shapes and initialisation.

.. math::
    x, z = \mathrm{split}(W_{in} h), \quad x = \operatorname{silu}(\mathrm{conv1d}_{causal}(x)), \quad
    (\delta, B, C) = \mathrm{split}(W_x x), \\
    \Delta = \operatorname{softplus}(W_{dt}\,\delta + b_{dt}), \quad A = -e^{A_{log}}, \quad
    y = \mathrm{S6}(x, \Delta, A, B, C, D) \odot \operatorname{silu}(z), \quad \mathrm{out} = W_{out}\, y

Parameters (``d_inner = expand * d_model``, ``dt_rank = ceil(d_model / 16)`` for ``"auto"``):

================  ===================================  =========================
name              shape                                init
================  ===================================  =========================
``in_proj``       weight ``(2 d_inner, d_model)``      torch default
``conv1d``        weight ``(d_inner, 1, d_conv)``,     torch default
                  bias ``(d_inner,)``
``x_proj``        weight ``(dt_rank + 2 d_state,       torch default
                  d_inner)``
``dt_proj``       weight ``(d_inner, dt_rank)``,       weight U(±dt_rank^-0.5); bias =
                  bias ``(d_inner,)``                  softplus^-1(dt), dt log-uniform in
                                                       [dt_min, dt_max], floored at dt_init_floor
``A_log``         ``(d_inner, d_state)``               log(1..d_state) per row
``D``             ``(d_inner,)``                       ones
``out_proj``      weight ``(d_model, d_inner)``        torch default
================  ===================================  =========================

so a ``state_dict`` of ``mamba_ssm.Mamba(d_model, d_state, d_conv, expand)`` loads with strict keys.
``A_log`` and ``D`` carry ``_no_weight_decay = True`` like mamba_ssm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.scan import selective_scan


class MambaBlock(nn.Module):
    """One Mamba-1 mixer: ``(B, L, d_model) -> (B, L, d_model)``, causal along ``L``.

    Args follow ``mamba_ssm.Mamba``; ``backend`` picks the selective scan
    (see :func:`zoo.nn.scan.selective_scan`). Initialisation draws from the global torch RNG, like
    every ``nn.Linear`` (seed with ``torch.manual_seed``).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1)
        )
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.reset_dt(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_dt(
        self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0
    ) -> None:
        """mamba_ssm's ``dt_proj`` init: weight U(±dt_scale·dt_rank^-0.5), bias = softplus^-1(dt)."""
        std = self.dt_rank**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

    def forward(
        self,
        hidden_states: Tensor,
        delta_shift: Tensor | None = None,
        b_shift: Tensor | None = None,
        c_shift: Tensor | None = None,
    ) -> Tensor:
        """Mix ``hidden_states (B, L, d_model)``.

        Optional per-sequence conditioning (used by SemaMIL's SRSM), all added before the scan:
        ``delta_shift (B, d_inner)`` to the pre-softplus step size, ``b_shift``/``c_shift
        (B, d_state)`` to the input/output projections ``B``/``C``.
        """
        length = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, 2 d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2 N)
        dt, b_mat, c_mat = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (B, d_inner, L); bias goes to the scan
        b_mat = b_mat.transpose(1, 2)  # (B, N, L)
        c_mat = c_mat.transpose(1, 2)
        if delta_shift is not None:
            delta = delta + delta_shift[..., None]
        if b_shift is not None:
            b_mat = b_mat + b_shift[..., None]
        if c_shift is not None:
            c_mat = c_mat + c_shift[..., None]
        y = selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            b_mat.contiguous(),
            c_mat.contiguous(),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.backend,
        )
        return self.out_proj(y.transpose(1, 2))
