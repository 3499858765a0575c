"""How the zoo's MIL models scale with bag size N: slides/s and peak memory at N = 1k, 10k, 100k.

For every model (ABMIL, ACMIL, TransMIL, ASMIL, and HAFED/SemaMIL/LRMIL/WiseFuse when importable) and
every N, one fresh subprocess builds the model with its default config for ``d``-wide features and a
random bag, then times

- inference: eval-mode ``predict_proba`` without gradients (slides/s);
- training: ``model.loss(batch)`` + backward + AdamW step + ``after_optimizer_step`` (slides/s);

(best of ``--repeats`` passes after a warm-up) and records peak memory: on CPU the growth of the process's peak RSS (``resource.ru_maxrss``) over the
RSS before the first pass (inference is measured first, so its peak is its own); on CUDA
``torch.cuda.max_memory_allocated``. The table ends with the growth ratio of time and memory between
the two largest N (linear scaling gives N_large / N_small, e.g. 10 for 10k -> 100k).

Models that read high-res children (``input_view`` ``hr``/``hier``) get ``k`` children per instance,
so their bag holds N * k feature vectors.

    .venv/bin/python benchmarks/zoo_scaling.py --n 1000 10000            # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/zoo_scaling.py --n 1000 10000 100000 --device cuda
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

from wsigym.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("abmil", "acmil", "transmil", "asmil", "hafed", "semamil", "lrmil", "wisefuse")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(arch: str, n: int, dim: int, k: int, device: str, repeats: int, seed: int) -> dict:
    """One (model, N) measurement in this process; returns a JSON-able dict."""
    import torch

    from zoo.registry import create_model

    torch.manual_seed(seed)
    model = create_model(arch, in_dim=dim, num_classes=2).to(device)
    view = model.input_view
    needs_hr = view in ("hr", "hier") or getattr(model, "needs_hr", False)
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "features": torch.randn(1, n, dim, generator=gen),
        "mask": torch.ones(1, n, dtype=torch.bool),
        "coords": torch.stack(
            [torch.arange(n) % int(n**0.5 + 1), torch.arange(n) // int(n**0.5 + 1)], -1
        ).float()[None],
        "label": torch.tensor([1]),
    }
    if needs_hr:
        batch["hr_features"] = torch.randn(1, n, k, dim, generator=gen)
        batch["hr_mask"] = torch.ones(1, n, k, dtype=torch.bool)
    vlm_dim = getattr(model.config, "vlm_dim", None)
    if vlm_dim:  # WISE-FUSE: a random VLM view and random unit class-text embeddings
        batch["vlm"] = torch.randn(1, n, vlm_dim, generator=gen)
        model.set_text_embeddings(torch.randn(2, vlm_dim, generator=gen))
    batch = {key: v.to(device) for key, v in batch.items()}
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, reps: int) -> float:
        """Best of ``reps`` passes after a warm-up (robust to other load on the machine)."""
        fn()
        best = float("inf")
        for _ in range(reps):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - start)
        return best

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step(b: dict) -> None:
        loss = model.loss(b)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_optimizer_step()

    # one tiny training step first: autograd threads, optimiser state and lazy allocations are then
    # part of the baseline, so the peaks below are what the bag itself costs
    step({key: v[:, :16] for key, v in batch.items() if key != "label"} | {"label": batch["label"]})
    model.eval()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mib()
    infer_s = timed(lambda: model.predict_proba(batch), repeats)
    infer_peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib()) - base

    model.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train_s = timed(lambda: step(batch), repeats)
    train_peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib()) - base
    return {
        "model": arch,
        "n": n,
        "view": view,
        "params": model.num_parameters(),
        "infer_slides_s": 1.0 / infer_s,
        "train_slides_s": 1.0 / train_s,
        "infer_peak_mib": infer_peak,
        "train_peak_mib": train_peak,
    }


def _available(arch: str) -> str | None:
    from zoo.registry import ARCHITECTURES

    module = ARCHITECTURES[arch].split(":")[0]
    try:
        importlib.import_module(module)
    except Exception as e:  # a family not written yet, or a missing optional dependency
        return f"{type(e).__name__}: {e}"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--n", nargs="+", type=int, default=[1000, 10000, 100000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=16, help="children per instance for hr/hier models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per (model, N) subprocess")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--_one", nargs=2, metavar=("ARCH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._one:
        arch, n = args._one[0], int(args._one[1])
        print(json.dumps(measure(arch, n, args.dim, args.k, args.device, args.repeats, args.seed)))
        return

    rows, notes = [], []
    for arch in args.models:
        problem = _available(arch)
        if problem:
            notes.append(f"skipped {arch}: {problem}")
            continue
        for n in sorted(args.n):
            cmd = [
                sys.executable,
                __file__,
                "--_one",
                arch,
                str(n),
                "--dim",
                str(args.dim),
                "--k",
                str(args.k),
            ]
            cmd += ["--device", args.device, "--repeats", str(args.repeats), "--seed", str(args.seed)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            except subprocess.TimeoutExpired:
                notes.append(f"{arch} N={n}: over {args.timeout:.0f} s, larger N skipped")
                break
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                notes.append(f"{arch} N={n}: failed ({last}), larger N skipped")
                break
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"  {arch:9s} N={n:>7d}  infer {r['infer_slides_s']:9.2f}/s  train {r['train_slides_s']:9.2f}/s  "
                f"peak {r['train_peak_mib']:8.1f} MiB",
                file=sys.stderr,
            )

    print(f"\nzoo scaling on {args.device}, d={args.dim}, repeats={args.repeats}\n")
    print("| model | N | params | infer slides/s | train slides/s | infer peak MiB | train peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['n']} | {r['params']} | {r['infer_slides_s']:.2f} | {r['train_slides_s']:.2f} | "
            f"{r['infer_peak_mib']:.1f} | {r['train_peak_mib']:.1f} |"
        )
    ns = sorted(args.n)
    if len(ns) >= 2:
        lo, hi = ns[-2], ns[-1]
        print(f"\ngrowth from N={lo} to N={hi} (linear = {hi / lo:.0f}x):\n")
        print("| model | infer time | train time | train peak memory |")
        print("|---|---:|---:|---:|")
        for arch in dict.fromkeys(r["model"] for r in rows):
            a = next((r for r in rows if r["model"] == arch and r["n"] == lo), None)
            b = next((r for r in rows if r["model"] == arch and r["n"] == hi), None)
            if a is None or b is None:
                continue
            mem = b["train_peak_mib"] / a["train_peak_mib"] if a["train_peak_mib"] > 1 else float("nan")
            print(
                f"| {arch} | {a['infer_slides_s'] / b['infer_slides_s']:.1f}x | "
                f"{a['train_slides_s'] / b['train_slides_s']:.1f}x | {mem:.1f}x |"
            )
    for note in notes:
        print(f"\nnote: {note}")
    if args.json:
        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
