r"""Mamba-1 selective scan (S6) with three backends.

For every batch element ``b``, channel ``d`` and state ``n`` the scan runs the linear recurrence

.. math::
    \Delta_{t} = \operatorname{softplus}(\delta_{t} + \beta) \;(\text{or } \delta_t + \beta), \qquad
    h_{t} = e^{\Delta_t A_{dn}}\, h_{t-1} + \Delta_t B_{nt}\, u_t, \qquad
    y_t = \sum_n C_{nt}\, h_{t,n} + D_d\, u_t

with :math:`h_{-1} = 0`, and returns :math:`y \odot \operatorname{silu}(z)` when ``z`` is given.
Argument conventions are those of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``:
``u, delta (B, D, L)``, ``A (D, N)``, ``B, C (B, N, L)``, ``D (D,)``, ``z (B, D, L)``,
``delta_bias (D,)``.

Backends:

- ``"reference"``: the recurrence as a sequential loop over ``L`` in float32 (the ground truth).
- ``"parallel"``: pure PyTorch two-pass chunked scan. The sequence is cut into chunks of ``T``
  steps (default 64) and all chunks advance together (a loop over the ``T`` positions of a chunk,
  vectorised over chunks). Pass 1 runs each chunk from a zero state to its end state
  :math:`h^{loc}_c`; the chunk decay is :math:`P_c = \exp(A \sum_{t \in c} \Delta_t)` (a
  log-space sum, so a product of factors in ``(0, 1]``: no overflow); the chunk-level recurrence
  :math:`H_c = P_c H_{c-1} + h^{loc}_c` of length ``L / T`` is solved by :func:`linear_scan`
  (the same chunking, recursively); pass 2 reruns every chunk from its true start state
  :math:`H_{c-1}` and contracts with ``C`` at each step. Only products of factors in ``(0, 1]`` and
  sums occur (no exponential of a positive cumulative sum, no division), so long sequences are as
  stable as the sequential loop; work is :math:`O(L)`, Python depth :math:`O(T \log_T L)`, and no
  ``(B, D, L, N)`` tensor is built (slices are ``(B, D, L/T, N)``; autograd keeps one per step).
  Log-decays are clamped at :data:`MIN_LOG_DECAY` (-80) to stay out of float32's slow denormal
  range.
- ``"checkpointed"``: memory-lean. Segments of ``segment`` steps (default 2048) run the parallel
  scan one after the other, each from the state the previous one left; the forward keeps no graph,
  and the backward reruns one segment at a time (:class:`_CheckpointedScan`). Peak memory is
  :math:`O(B D L + B D S N)` instead of :math:`O(B D L N)` (at ``L = 20000``, ``D = 384``,
  ``N = 16``: under 1 GB instead of several; ``benchmarks/scan_memory.py`` measures it), for one
  extra forward pass; on long sequences it is also faster (less memory traffic).
- ``"numba"``: the sequential recurrence as compiled loops, one channel at a time, with a hand-written
  backward (:mod:`zoo.nn.scan_numba`; CPU tensors, ``numba`` importable: the ``fast-scan`` extra).
  Memory-lean like ``"checkpointed"`` and, at ``L = 17536``, about 10x faster forward + backward
  (``benchmarks/scan_memory.py``).
- ``"mamba_ssm"``: the fused CUDA kernel ``selective_scan_fn`` (tensors on CUDA, ``mamba_ssm``
  importable).
- ``"auto"``: ``mamba_ssm`` when the tensors are on CUDA and it imports; ``numba`` when they are on the
  CPU and it imports; else ``checkpointed`` when a backward pass follows and the state ``(B, D, L, N)``
  has more than :data:`AUTO_CHECKPOINT_ELEMENTS` elements, else ``parallel`` (the pure-PyTorch scans,
  with no extra dependency).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "reference", "parallel", "checkpointed", "numba", "mamba_ssm")
DEFAULT_CHUNK = 64
#: steps per recomputed segment of the ``"checkpointed"`` backend
DEFAULT_SEGMENT = 2048
#: ``"auto"`` picks ``"checkpointed"`` over ``"parallel"`` for a backward pass when the state
#: ``(B, D, L, N)`` has more elements than this (2^25, e.g. L > 5461 at D = 384, N = 16: from there on the
#: checkpointed scan is faster and uses a fraction of the memory; see benchmarks/scan_memory.py)
AUTO_CHECKPOINT_ELEMENTS = 2**25
#: the parallel backend clamps log-decays at this value: exp(-80) ~ 1.8e-35 stays a normal float32
#: (denormal arithmetic is up to 100x slower on CPUs); the effect on h is below float32 resolution
MIN_LOG_DECAY = -80.0


@functools.cache
def _mamba_ssm_scan_fn() -> Callable[..., Tensor] | None:
    """``mamba_ssm``'s CUDA ``selective_scan_fn``, or None when it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a CUDA/Triton error raised while importing
        return None
    return selective_scan_fn


def mamba_ssm_available() -> bool:
    """True when ``mamba_ssm``'s CUDA selective scan can be imported."""
    return _mamba_ssm_scan_fn() is not None


def resolve_backend(backend: str, device: torch.device, state_elements: int = 0, grad: bool = False) -> str:
    """The backend that ``backend`` means for tensors on ``device`` (``"auto"`` resolved).

    ``"auto"``: ``"mamba_ssm"`` on CUDA when it imports; ``"numba"`` on the CPU when it imports;
    otherwise ``"checkpointed"`` when a backward pass will follow (``grad``) and the state
    ``(B, D, L, N)`` has more than :data:`AUTO_CHECKPOINT_ELEMENTS` elements (``state_elements``), else
    ``"parallel"`` (faster, but its autograd graph holds several state-sized tensors).

    Raises:
        ValueError: for an unknown backend, ``"mamba_ssm"`` off CUDA / not installed, or ``"numba"`` off
            the CPU / not installed.
    """
    from zoo.nn.scan_numba import numba_available

    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and mamba_ssm_available():
            return "mamba_ssm"
        if device.type == "cpu" and numba_available():
            return "numba"
        return "checkpointed" if grad and state_elements > AUTO_CHECKPOINT_ELEMENTS else "parallel"
    if backend == "numba":
        if device.type != "cpu":
            raise ValueError(f"selective_scan: backend 'numba' needs CPU tensors, got device {device}")
        if not numba_available():
            raise ValueError(
                "selective_scan: backend 'numba' requested but numba does not import "
                "(pip install 'wsigym[fast-scan]')"
            )
    if backend == "mamba_ssm":
        if device.type != "cuda":
            raise ValueError(f"selective_scan: backend 'mamba_ssm' needs CUDA tensors, got device {device}")
        if not mamba_ssm_available():
            raise ValueError("selective_scan: backend 'mamba_ssm' requested but mamba_ssm does not import")
    return backend


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, D, L), got shape {tuple(u.shape)}")
    b, d, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (D={d}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, n, length):
            raise ValueError(
                f"selective_scan: {name} must be (B, N, L) = {(b, n, length)}, got {tuple(t.shape)}"
            )
    if D is not None and D.shape != (d,):
        raise ValueError(f"selective_scan: D must be ({d},), got {tuple(D.shape)}")


def _discretise(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Tensor | None, delta_softplus: bool
) -> tuple[Tensor, Tensor]:
    """Decay ``exp(Δ A)`` and input ``Δ B u``, both ``(B, D, L, N)`` float32."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta[..., None] * A.float()[:, None, :])  # (B, D, L, N)
    drive = (delta * u.float())[..., None] * B.float().transpose(1, 2)[:, None]  # (B, D, L, N)
    return decay, drive


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def _scan_reference(decay: Tensor, drive: Tensor) -> Tensor:
    """States ``h (B, D, L, N)`` of ``h_t = decay_t h_{t-1} + drive_t``, sequentially."""
    h = decay.new_zeros(decay[:, :, 0].shape)
    states = []
    # unbind, not indexing: the backward of one unbind is one stack (indexing would build a
    # full-size zero gradient per step, O(L^2))
    for a_t, x_t in zip(decay.unbind(2), drive.unbind(2)):
        h = a_t * h + x_t
        states.append(h)
    return torch.stack(states, dim=2)


def linear_scan(decay: Tensor, drive: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Chunked parallel solution of ``h_t = decay_t * h_{t-1} + drive_t`` (``h_{-1} = 0``) along dim 2.

    ``decay, drive (B, D, L, N)`` -> ``h (B, D, L, N)``, with ``decay`` in ``[0, 1]``. Chunks of
    ``chunk`` steps are scanned together from zero (local states and running decay products), the
    chunk-end states are carried by a recursive call on the ``L / chunk`` chunk summaries, and
    ``h = h_local + running_product * h_chunk_start``. Used for the chunk carries of the
    ``"parallel"`` backend (which never materialises these tensors at full length).
    """
    b, d, length, n = decay.shape
    if length <= chunk:
        return _scan_reference(decay, drive)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:  # identity steps at the end: decay 1, drive 0
        decay = F.pad(decay, (0, 0, 0, pad), value=1.0)
        drive = F.pad(drive, (0, 0, 0, pad), value=0.0)
    # (T, B, D, n_chunks, N): position-in-chunk first, so each step is one contiguous slice
    a = decay.reshape(b, d, n_chunks, chunk, n).permute(3, 0, 1, 2, 4).contiguous()
    x = drive.reshape(b, d, n_chunks, chunk, n).permute(3, 0, 1, 2, 4).contiguous()
    h = torch.zeros_like(x[0])
    p = torch.ones_like(a[0])
    local, prods = [], []
    for a_t, x_t in zip(a.unbind(0), x.unbind(0)):
        h = a_t * h + x_t
        p = p * a_t
        local.append(h)
        prods.append(p)
    local_h = torch.stack(local, dim=3)  # (B, D, n_chunks, T, N)
    prod = torch.stack(prods, dim=3)
    # chunk-level recurrence: H_c = prod_c(end) * H_{c-1} + local_c(end)
    ends = linear_scan(prod[:, :, :, -1], local_h[:, :, :, -1], chunk)  # (B, D, n_chunks, N)
    start = F.pad(ends[:, :, :-1], (0, 0, 1, 0))  # state entering each chunk
    h_all = local_h + prod * start[:, :, :, None]
    return h_all.reshape(b, d, n_chunks * chunk, n)[:, :, :length]


def _scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``y (B, D, L) = sum_n C h`` by the two-pass chunked scan (float32 inputs, Δ final).

    Pass 1 runs every chunk from a zero state to get its end state; chunk decays are
    ``exp(A * sum(Δ over the chunk))`` (a product of factors in (0, 1], computed in log space: no
    overflow); the chunk-level recurrence gives each chunk's start state (:func:`linear_scan`);
    pass 2 reruns the chunks from their true start states and contracts with ``C`` per step, so no
    ``(B, D, L, N)`` tensor is ever built (per-step slices are ``(B, D, L/T, N)``).

    ``h0 (B, D, N)`` is the state before the first step (zero when None). Returns ``y`` and the
    state after the last step ``(B, D, N)``.
    """
    b, d, length = u.shape
    n = A.shape[1]
    t_len = min(chunk, length)
    n_chunks = -(-length // t_len)
    pad = n_chunks * t_len - length
    if pad:  # Δ = 0 at the end: decay 1 and drive 0, an identity step
        u, delta, B, C = (F.pad(x, (0, pad)) for x in (u, delta, B, C))
    # position in chunk first: (T, B, D, n_chunks) and (T, B, 1, n_chunks, N)
    u_t = u.reshape(b, d, n_chunks, t_len).permute(3, 0, 1, 2)
    dt_t = delta.reshape(b, d, n_chunks, t_len).permute(3, 0, 1, 2)
    b_t = B.reshape(b, n, n_chunks, t_len).permute(3, 0, 2, 1)[:, :, None]
    c_t = C.reshape(b, n, n_chunks, t_len).permute(3, 0, 2, 1)[:, :, None]
    a_mat = A[:, None, :]  # (D, 1, N)

    def decay(dt: Tensor) -> Tensor:  # exp(Δ A), kept out of float32's (slow) denormal range
        return torch.exp((dt[..., None] * a_mat).clamp_min(MIN_LOG_DECAY))

    steps = list(zip(dt_t.unbind(0), (dt_t * u_t).unbind(0), b_t.unbind(0), c_t.unbind(0)))

    if n_chunks > 1:
        h = u.new_zeros(b, d, n_chunks, n)
        for dt, du, bb, _ in steps:  # pass 1: local end states
            h = decay(dt) * h + du[..., None] * bb
        chunk_decay = decay(dt_t.sum(0))  # (B, D, n_chunks, N)
        if h0 is not None:  # the first chunk starts from h0: H_0 = P_0 h0 + h_loc_0
            h = torch.cat([h[:, :, :1] + chunk_decay[:, :, :1] * h0[:, :, None], h[:, :, 1:]], dim=2)
        ends = linear_scan(chunk_decay, h, chunk)
        first = u.new_zeros(b, d, 1, n) if h0 is None else h0[:, :, None]
        h = torch.cat([first, ends[:, :, :-1]], dim=2)  # state entering each chunk
    else:
        h = u.new_zeros(b, d, 1, n) if h0 is None else h0[:, :, None]
    ys = []
    for dt, du, bb, cc in steps:  # pass 2: true states, contracted with C at once
        h = decay(dt) * h + du[..., None] * bb
        ys.append((h * cc).sum(-1))  # (B, D, n_chunks)
    y = torch.stack(ys, dim=-1).reshape(b, d, n_chunks * t_len)[:, :, :length]
    return y, h[:, :, -1]  # padded steps are identities: the last chunk's end is the final state


class _CheckpointedScan(torch.autograd.Function):
    r"""The ``"checkpointed"`` backend: segments of :math:`S` = ``segment`` steps in sequence.

    Forward (no graph): segment :math:`s` runs :func:`_scan_chunked` from the state
    :math:`h_s\ (B, D, N)` left by segment :math:`s - 1`; only the inputs and the segment start
    states :math:`(n_{seg}, B, D, N)` are kept. Backward walks the segments in reverse: it reruns
    segment :math:`s` from :math:`h_s` with autograd, back-propagates the output gradient of the
    segment together with :math:`\partial \mathcal{L} / \partial h_{s+1}` (carried from segment
    :math:`s + 1`), writes the input gradients into preallocated ``(B, D, L)`` / ``(B, N, L)``
    tensors and carries :math:`\partial \mathcal{L} / \partial h_s` on. Peak memory is
    :math:`O(B D L + B D S N)` instead of the parallel backend's :math:`O(B D L N)`, for one extra
    forward pass. Not twice differentiable.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, segment: int
    ) -> Tensor:
        b, d, length = u.shape
        y = u.new_empty(b, d, length)
        h = u.new_zeros(b, d, A.shape[1])
        starts = []
        with torch.no_grad():
            for start in range(0, length, segment):
                part = slice(start, start + segment)
                starts.append(h)
                y_s, h = _scan_chunked(
                    u[..., part], delta[..., part], A, B[..., part], C[..., part], chunk, h
                )
                y[..., part] = y_s
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
        ctx.chunk, ctx.segment = chunk, segment
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        u, delta, A, B, C, starts = ctx.saved_tensors
        length = u.shape[-1]
        grads = [torch.zeros_like(x) for x in (u, delta, B, C)]
        grad_a = torch.zeros_like(A)
        grad_h: Tensor | None = None
        seg_starts = list(range(0, length, ctx.segment))
        for index in reversed(range(len(seg_starts))):
            part = slice(seg_starts[index], seg_starts[index] + ctx.segment)
            leaves = [x[..., part].detach().requires_grad_(True) for x in (u, delta, B, C)]
            a_leaf = A.detach().requires_grad_(True)
            h0 = starts[index].detach().requires_grad_(True)
            with torch.enable_grad():
                y_s, h_end = _scan_chunked(leaves[0], leaves[1], a_leaf, leaves[2], leaves[3], ctx.chunk, h0)
                outputs, out_grads = [y_s], [grad_y[..., part]]
                if grad_h is not None:
                    outputs.append(h_end)
                    out_grads.append(grad_h)
                got = torch.autograd.grad(outputs, [*leaves, a_leaf, h0], out_grads, allow_unused=True)
            for full, g in zip(grads, got[:4]):
                if g is not None:
                    full[..., part] = g
            if got[4] is not None:
                grad_a += got[4]
            grad_h = got[5]
        gu, gdelta, gb, gc = grads
        return gu, gdelta, grad_a, gb, gc, None, None


def _selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    backend: str,
    chunk: int,
    segment: int,
) -> Tensor:
    if backend == "reference":
        decay, drive = _discretise(u, delta, A, B, delta_bias, delta_softplus)
        y = torch.einsum("bdln,bnl->bdl", _scan_reference(decay, drive), C.float())
        return _finish(y, u, D, z, u.dtype)
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    if backend == "checkpointed":
        y = _CheckpointedScan.apply(u.float(), dt, A.float(), B.float(), C.float(), chunk, segment)
    elif backend == "numba":
        from zoo.nn.scan_numba import NumbaScan

        y = NumbaScan.apply(u.float(), dt, A.float(), B.float(), C.float())
    else:
        y, _ = _scan_chunked(u.float(), dt, A.float(), B.float(), C.float(), chunk)
    return _finish(y, u, D, z, u.dtype)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
    chunk: int = DEFAULT_CHUNK,
    segment: int = DEFAULT_SEGMENT,
) -> Tensor:
    """Selective scan ``y (B, D, L)`` (see the module docstring for maths and backends).

    Args:
        u: inputs ``(B, D, L)``.
        delta: step sizes before bias/softplus ``(B, D, L)``.
        A: state matrix (diagonal per channel) ``(D, N)``, normally negative.
        B: input projections ``(B, N, L)``.
        C: output projections ``(B, N, L)``.
        D: skip weights ``(D,)``.
        z: gate ``(B, D, L)``; the output is multiplied by ``silu(z)``.
        delta_bias: added to ``delta`` before the softplus ``(D,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: ``"auto"``, ``"reference"``, ``"parallel"``, ``"checkpointed"``, ``"numba"`` or
            ``"mamba_ssm"``.
        chunk: chunk length of the ``"parallel"`` and ``"checkpointed"`` backends.
        segment: segment length of the ``"checkpointed"`` backend.

    Returns:
        ``(B, D, L)`` in ``u``'s dtype (computed in float32 by the torch backends).
    """
    _check_shapes(u, delta, A, B, C, D)
    if chunk < 2:
        raise ValueError(f"selective_scan: chunk must be >= 2, got {chunk}")
    if segment < 1:
        raise ValueError(f"selective_scan: segment must be >= 1, got {segment}")
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)
    )
    resolved = resolve_backend(backend, u.device, state_elements=u.numel() * A.shape[1], grad=grad)
    if resolved == "mamba_ssm":
        fn = _mamba_ssm_scan_fn()
        assert fn is not None
        return fn(
            u.contiguous(),
            delta.contiguous(),
            A.contiguous(),
            B.contiguous(),
            C.contiguous(),
            D=None if D is None else D.float(),
            z=None if z is None else z.contiguous(),
            delta_bias=None if delta_bias is None else delta_bias.float(),
            delta_softplus=delta_softplus,
        )
    return _selective_scan_torch(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, resolved, chunk, segment
    )
