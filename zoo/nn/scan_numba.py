r"""The selective scan on the CPU as compiled loops (numba): the ``"numba"`` backend of :mod:`zoo.nn.scan`.

The recurrence of :mod:`zoo.nn.scan` (final step sizes :math:`\Delta`, float32),

.. math::
    E_{tn} = e^{\max(\Delta_t A_n,\, -80)}, \qquad x_t = \Delta_t u_t, \qquad
    h_t = E_t \odot h_{t-1} + x_t B_t, \qquad y_t = C_t^\top h_t ,

is run for one channel ``(b, d)`` at a time by a numba kernel: a plain sequential loop over ``L`` and the
``N`` states, at compiled speed. The decays ``E (L, N)`` of the channel are computed by numpy's vectorised
``exp`` just before (numba's scalar ``exp`` is several times slower). The clamp at -80 is the one of the
``"parallel"`` backend (:data:`zoo.nn.scan.MIN_LOG_DECAY`), with zero gradient below it, so the backends
agree.

Backward (:class:`NumbaScan`), per channel: the forward states :math:`H (L, N)` are recomputed, then one
reverse loop carries :math:`g_t = \partial\mathcal{L}/\partial h_t = C_t\, \bar y_t + E_{t+1} \odot g_{t+1}`
and accumulates

.. math::
    \bar C_t \mathrel{+}= \bar y_t h_t, \quad \bar B_t \mathrel{+}= x_t g_t, \quad
    \bar x_t = g_t^\top B_t, \quad \overline{\log E}_{tn} = g_{tn} h_{t-1,n} E_{tn}, \quad
    \bar\Delta_t = \textstyle\sum_n \overline{\log E}_{tn} A_n + \bar x_t u_t, \quad
    \bar u_t = \bar x_t \Delta_t, \quad \bar A_n \mathrel{+}= \textstyle\sum_t \overline{\log E}_{tn} \Delta_t .

Memory beyond inputs and outputs is two ``(L, N)`` buffers (one channel), against the ``(B, D, L, N)``
states of a direct implementation: at ``L = 20000``, ``N = 16`` that is 2.6 MB. Work is :math:`O(B D L N)`
with no Python per step. Single-threaded (it follows ``torch.set_num_threads`` only in that it uses one
core). Needs ``numba`` (``pip install 'wsigym[fast-scan]'``); :func:`numba_available` says whether it
imports.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: log-decays are clamped here, as in the "parallel" backend (float32 denormals are slow)
MIN_LOG_DECAY = -80.0


#: channels per kernel call: their decays ``(K, L, N)`` are one float32 block (1.1 MB per channel at
#: L = 17536, N = 16; a small block stays in the cache, where numpy's exp is fastest)
BLOCK = 2


@functools.cache
def _kernels() -> tuple[Any, Any] | None:
    """The compiled kernels ``(forward, backward)``, or None when numba does not import."""
    try:
        import numba
    except Exception:  # ImportError, or numba failing against this numpy
        return None

    @numba.njit(cache=True, fastmath=True)
    def forward(decay, x, b, c, y):  # pragma: no cover - compiled
        # a block of K channels: decay (K, L, N), x (K, L), b, c (L, N) -> y (K, L)
        channels, length, n = decay.shape
        h = np.zeros(n, np.float32)
        for j in range(channels):
            h[:] = 0.0
            for t in range(length):
                acc = np.float32(0.0)
                for k in range(n):
                    h[k] = decay[j, t, k] * h[k] + x[j, t] * b[t, k]
                    acc += c[t, k] * h[k]
                y[j, t] = acc

    @numba.njit(cache=True, fastmath=True)
    def backward(decay, dt, u, a, b, c, gy, h, gu, gdt, ga, gb, gc):  # pragma: no cover - compiled
        # a block of K channels (as forward); h (L, N) scratch; gu, gdt (K, L) written;
        # ga (K, N), gb, gc (L, N) accumulated
        channels, length, n = decay.shape
        g = np.zeros(n, np.float32)
        for j in range(channels):
            for k in range(n):  # the states h_t, recomputed
                h[0, k] = dt[j, 0] * u[j, 0] * b[0, k]
            for t in range(1, length):
                x_t = dt[j, t] * u[j, t]
                for k in range(n):
                    h[t, k] = decay[j, t, k] * h[t - 1, k] + x_t * b[t, k]
            g[:] = 0.0
            for t in range(length - 1, -1, -1):
                x_t = dt[j, t] * u[j, t]
                gx = np.float32(0.0)
                glog_dt = np.float32(0.0)
                for k in range(n):
                    g[k] += c[t, k] * gy[j, t]
                    gc[t, k] += h[t, k] * gy[j, t]
                    gb[t, k] += g[k] * x_t
                    gx += g[k] * b[t, k]
                if t > 0:
                    for k in range(n):
                        # d/d(log E); where the log-decay was clamped E = e^-80, so this is ~1e-35 (0 in
                        # the "parallel" backend): below float32 resolution of any gradient it is added to
                        glog = g[k] * h[t - 1, k] * decay[j, t, k]
                        glog_dt += glog * a[j, k]
                        ga[j, k] += glog * dt[j, t]
                for k in range(n):
                    g[k] *= decay[j, t, k]
                gdt[j, t] = glog_dt + gx * u[j, t]
                gu[j, t] = gx * dt[j, t]

    return forward, backward


def numba_available() -> bool:
    """True when numba imports (the ``"numba"`` scan backend can run)."""
    return _kernels() is not None


def _decay(dt: np.ndarray, a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``exp(max(dt a, -80))`` into ``out (K, L, N)`` for a block of channels, ``dt (K, L)``, ``a (K, N)``
    (numpy's vectorised exp, in place: a small block stays in the CPU cache)."""
    k = dt.shape[0]
    out = out[:k]
    np.multiply(dt[:, :, None], a[:, None, :], out=out)
    np.maximum(out, np.float32(MIN_LOG_DECAY), out=out)
    return np.exp(out, out=out)


class NumbaScan(torch.autograd.Function):
    """``y (B, D, L)`` from ``u, dt (B, D, L)``, ``A (D, N)``, ``B, C (B, N, L)``; float32 CPU tensors,
    ``dt`` final (bias and softplus applied). Module docstring for the maths. Not twice differentiable."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:  # type: ignore[override]
        kernels = _kernels()
        if kernels is None:
            raise ValueError("selective_scan: backend 'numba' requested but numba does not import")
        forward = kernels[0]
        u, dt, A = (t.detach().contiguous() for t in (u, dt, A))
        b_np = B.detach().transpose(1, 2).contiguous().numpy()  # (B, L, N): one row per step
        c_np = C.detach().transpose(1, 2).contiguous().numpy()
        dt_np, a_np, x = dt.numpy(), A.numpy(), (dt * u).numpy()
        y = np.empty(u.shape, dtype=np.float32)
        buffer = np.empty((BLOCK, u.shape[2], A.shape[1]), dtype=np.float32)
        for i in range(u.shape[0]):
            for d0 in range(0, u.shape[1], BLOCK):
                k = slice(d0, d0 + BLOCK)
                forward(_decay(dt_np[i, k], a_np[k], buffer), x[i, k], b_np[i], c_np[i], y[i, k])
        ctx.save_for_backward(u, dt, A, B, C)
        return torch.from_numpy(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        backward = _kernels()[1]  # type: ignore[index]
        u, dt, A, B, C = ctx.saved_tensors
        u_np, dt_np, a_np = u.numpy(), dt.numpy(), A.numpy()
        b_np = B.detach().transpose(1, 2).contiguous().numpy()
        c_np = C.detach().transpose(1, 2).contiguous().numpy()
        gy = grad_y.detach().float().contiguous().numpy()
        batch, channels, length = u_np.shape
        gu = np.empty_like(u_np)
        gdt = np.empty_like(dt_np)
        ga = np.zeros_like(a_np)
        gb = np.zeros_like(b_np)
        gc = np.zeros_like(c_np)
        h = np.empty((length, a_np.shape[1]), dtype=np.float32)
        buffer = np.empty((BLOCK, length, a_np.shape[1]), dtype=np.float32)
        for i in range(batch):
            for d0 in range(0, channels, BLOCK):
                k = slice(d0, d0 + BLOCK)
                backward(
                    _decay(dt_np[i, k], a_np[k], buffer), dt_np[i, k], u_np[i, k], a_np[k], b_np[i], c_np[i], gy[i, k],
                    h, gu[i, k], gdt[i, k], ga[k], gb[i], gc[i],
                )  # fmt: skip
        as_t = torch.from_numpy
        return as_t(gu), as_t(gdt), as_t(ga), as_t(gb).transpose(1, 2), as_t(gc).transpose(1, 2)
