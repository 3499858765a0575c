"""CPU time of a pure-PyTorch MambaBlock (chunked parallel selective scan) vs ``nn.GRU`` of the same width.

One bag (batch 1) of ``L`` tokens of width ``d_model``; the Mamba block has expand 2, d_state 16,
d_conv 4 (mamba_ssm defaults), the GRU one layer with hidden size ``d_model``. Forward + backward
(sum of outputs) at each ``L`` in ``--lengths``, forward only (no_grad) at ``--forward-only``.
Prints one table from one run, with Mamba/GRU time ratios (> 1: Mamba slower).

    python benchmarks/scan_vs_gru.py [--d-model 64] [--lengths 1000 10000] [--forward-only 100000]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from zoo.nn.mamba import MambaBlock


def _best_time(fn: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _step(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, backward: bool
) -> Callable[[], None]:
    def run() -> None:
        if backward:
            xi = x.clone().requires_grad_(True)
            model(xi).sum().backward()
        else:
            with torch.no_grad():
                model(x)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--forward-only", type=int, nargs="*", default=[100000])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (1 above 10k tokens)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    mamba = MambaBlock(args.d_model, backend="parallel")
    gru = nn.GRU(args.d_model, args.d_model, batch_first=True)

    def gru_out(x: torch.Tensor) -> torch.Tensor:
        return gru(x)[0]

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; d_model {args.d_model}; "
        f"Mamba params {sum(p.numel() for p in mamba.parameters())}, "
        f"GRU params {sum(p.numel() for p in gru.parameters())}"
    )
    print(f"{'L':>8} {'pass':>9} {'mamba s':>9} {'gru s':>9} {'mamba/gru':>10}")
    jobs = [(n, True) for n in args.lengths] + [(n, False) for n in args.forward_only]
    for length, backward in jobs:
        x = torch.randn(1, length, args.d_model)
        repeats = args.repeats if length <= 10000 else 1
        _step(mamba, x[:, :64], backward)()  # warm-up
        _step(gru_out, x[:, :64], backward)()
        t_mamba = _best_time(_step(mamba, x, backward), repeats)
        t_gru = _best_time(_step(gru_out, x, backward), repeats)
        label = "fwd+bwd" if backward else "fwd"
        print(f"{length:>8} {label:>9} {t_mamba:>9.3f} {t_gru:>9.3f} {t_mamba / t_gru:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
