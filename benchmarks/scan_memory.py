"""Peak memory and time of one selective-scan forward + backward: an old backend vs a new one (default
``parallel`` vs ``checkpointed``; ``--backends checkpointed numba`` compares the compiled CPU scan).

Each case (backend x sequence length ``L``) runs in its own subprocess on one bag (batch 1) of ``D``
channels (``--d``, default 384) and ``N`` states (``--d-state``, default 16), with random inputs as in
a Mamba block (softplus step sizes, gate ``z``, skip ``D``), float32, one CPU thread by default.

Memory is the **peak resident set size** of that subprocess (``resource.getrusage(...).ru_maxrss``,
what the operating system charges the process, glibc's default allocator), reported both as the
absolute peak and as the increase over the process's peak just before the scan (torch imported,
inputs built). Time is the wall clock of the forward + backward. A case whose process would exceed
``--limit-gb`` of data memory (``RLIMIT_DATA``) fails with an allocation error and is reported as
``> limit`` instead of swapping the machine.

    python benchmarks/scan_memory.py [--lengths 1000 10000 20000 100000] [--d 384] [--out FILE.json]
    python benchmarks/scan_memory.py --semamil --lengths 20000   # the whole SemaMIL, in_dim 384
    python benchmarks/scan_memory.py --backends checkpointed numba --lengths 20000 [--semamil]

Prints one table with new/old ratios and writes the raw numbers as JSON (default
``runs/scan_memory.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from wsigym.io import atomic_write_json

BACKENDS = ("parallel", "checkpointed")

_CHILD = r"""
import json, resource, sys, time
limit = int(sys.argv[6])
if limit > 0:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
import torch
from zoo.nn.scan import selective_scan

backend, length, d, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
r = lambda *shape: torch.randn(*shape, generator=g)
leaves = {
    "u": r(1, d, length), "delta": r(1, d, length), "B": r(1, n, length), "C": r(1, n, length),
    "z": r(1, d, length), "D": r(d), "delta_bias": r(d),
    "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
}
leaves = {k: v.requires_grad_(True) for k, v in leaves.items()}
model = None
if sys.argv[7] != "-":  # the whole SemaMIL (default config) on a bag of `length` instances of width d
    from zoo.registry import create_model
    torch.manual_seed(0)
    model = create_model("semamil", in_dim=d, scan_backend=backend, **json.loads(sys.argv[7]))
    feats = r(1, length, d)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
base = peak()
start = time.perf_counter()
try:
    if model is None:
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        y.square().mean().backward()
    else:
        model(feats)["logits"].logsumexp(-1).sum().backward()
    status = "ok"
except (RuntimeError, MemoryError) as e:
    status = "over limit" if "alloc" in str(e).lower() or isinstance(e, MemoryError) else f"error: {e}"
seconds = time.perf_counter() - start
print(json.dumps({"status": status, "seconds": seconds, "base_mib": base, "peak_mib": peak()}))
"""


def run_case(
    backend: str, length: int, d: int, n: int, threads: int, limit_bytes: int, semamil: str | None = None
) -> dict[str, Any]:
    """One forward + backward in a fresh subprocess; returns its JSON line (plus the case).

    ``semamil``: a JSON object of SemaMIL config overrides to time the whole model instead of one scan.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", _CHILD, backend, str(length), str(d), str(n), str(threads), str(limit_bytes)]
    cmd.append(semamil if semamil is not None else "-")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    case: dict[str, Any] = {"backend": backend, "length": length, "d": d, "d_state": n}
    if semamil is not None:
        case["semamil"] = json.loads(semamil)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        status = "over limit" if "alloc" in tail.lower() or proc.returncode < 0 else f"error: {tail}"
        return {**case, "status": status}
    return {**case, **json.loads(lines[-1])}


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    if row.get("status") != "ok":
        return "> limit" if row.get("status") == "over limit" else "error"
    return format(row[key], fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000, 20000, 100000])
    parser.add_argument(
        "--backends",
        nargs=2,
        default=list(BACKENDS),
        metavar=("OLD", "NEW"),
        help="the two backends compared",
    )
    parser.add_argument("--d", type=int, default=384, help="channels D of the scan")
    parser.add_argument("--d-state", type=int, default=16, help="states N per channel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    parser.add_argument(
        "--limit-gb", type=float, default=8.0, help="data-memory cap per subprocess (0: none)"
    )
    parser.add_argument("--out", default="runs/scan_memory.json", help="JSON file for the raw numbers")
    parser.add_argument(
        "--semamil",
        nargs="?",
        const="{}",
        default=None,
        metavar="JSON",
        help="time the whole SemaMIL (default config, or these JSON overrides; in_dim = --d) forward + "
        "backward on one bag of L instances instead of one scan with D channels",
    )
    args = parser.parse_args(argv)

    limit = int(args.limit_gb * 2**30)
    rows = []
    for length in args.lengths:
        for backend in args.backends:
            row = run_case(backend, length, args.d, args.d_state, args.threads, limit, args.semamil)
            if row.get("status") == "ok":
                row["scan_mib"] = row["peak_mib"] - row["base_mib"]
            rows.append(row)
            print(f"  done {backend:<12} L={length:<7} {row.get('status')}", file=sys.stderr, flush=True)

    what = f"SemaMIL {args.semamil} on L instances of width {args.d}" if args.semamil else "selective scan"
    print(
        f"{what} forward + backward, B=1, D={args.d}, N={args.d_state}, float32, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, limit {args.limit_gb} GB"
    )
    print(f"old = {args.backends[0]}, new = {args.backends[1]}")
    print("peak RSS increase over the pre-scan peak (MiB), absolute peak RSS (MiB), seconds")
    header = (
        f"{'L':>7} | {'old MiB':>8} {'new MiB':>8} {'new/old':>7} | {'old peak':>8} {'new peak':>8} | "
        f"{'old s':>7} {'new s':>7} {'new/old':>7}"
    )
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        old, new = (
            next(r for r in rows if r["length"] == length and r["backend"] == b) for b in args.backends
        )
        both = old.get("status") == "ok" and new.get("status") == "ok"
        mem_ratio = f"{new['scan_mib'] / max(old['scan_mib'], 1e-9):.2f}" if both else "–"
        time_ratio = f"{new['seconds'] / old['seconds']:.2f}" if both else "–"
        print(
            f"{length:>7} | {_cell(old, 'scan_mib', '8.0f'):>8} {_cell(new, 'scan_mib', '8.0f'):>8} "
            f"{mem_ratio:>7} | {_cell(old, 'peak_mib', '8.0f'):>8} {_cell(new, 'peak_mib', '8.0f'):>8} | "
            f"{_cell(old, 'seconds', '7.2f'):>7} {_cell(new, 'seconds', '7.2f'):>7} {time_ratio:>7}"
        )
    meta = {k: v for k, v in vars(args).items() if k != "out"}
    out = atomic_write_json(args.out, {"settings": meta, "memory": "peak RSS (ru_maxrss)", "cases": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
