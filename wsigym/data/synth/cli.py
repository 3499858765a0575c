"""``wsigym synth build|describe|calibrate``: the embedded synth-c16 benchmark."""

from __future__ import annotations

import argparse
import json
import time

from wsigym.data.synth.config import SynthConfig
from wsigym.data.synth.dataset import SynthC16


def _open(args: argparse.Namespace) -> SynthC16:
    config = SynthConfig.tiny() if args.tiny else SynthConfig()
    name = "synth-c16-tiny" if args.tiny else "synth-c16"
    return SynthC16(
        seed=args.seed, config=config, cache_dir=args.cache_dir, progress=not args.quiet, name=name
    )


def _build(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ds = _open(args)
    m = ds.manifest
    print(
        f"{ds.name}: {len(ds)} slides in {ds.cache_dir} ({m['disk_bytes'] / 1e6:.1f} MB, "
        f"built in {m['build_seconds']:.1f} s; opened in {time.perf_counter() - start:.1f} s)"
    )
    return 0


def _describe(args: argparse.Namespace) -> int:
    from wsigym.data.synth.describe import describe, format_description

    d = describe(_open(args))
    print(json.dumps(d, default=float) if args.json else format_description(d))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from wsigym.data.synth.calibrate import calibrate, format_report

    ds = _open(args)
    report = calibrate(
        ds,
        epochs=args.epochs,
        seed=args.train_seed,
        zoom_fraction=args.zoom,
        progress=not args.quiet,
        lr=args.lr,
    )
    print(format_report(report))
    print(f"saved to {ds.calibration_path}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``wsigym synth build|describe|calibrate``."""
    synth = sub.add_parser(
        "synth", help="the embedded synth-c16 benchmark (real geometry, simulated features)"
    )
    group = synth.add_subparsers(dest="synth_command", required=True)
    for name, func, text in (
        ("build", _build, "build (or reuse) the cache of synth-c16"),
        ("describe", _describe, "slides, N and tumour statistics vs the real annotations, calibration"),
        ("calibrate", _calibrate, "train hr/lr ABMIL and zoom references; save calibration.json"),
    ):
        p = group.add_parser(name, help=text)
        p.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
        p.add_argument(
            "--cache-dir", default=None, help="cache folder (default under $WSIGYM_CACHE or ~/.cache)"
        )
        p.add_argument("--tiny", action="store_true", help="the small synth-c16-tiny config")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "describe":
            p.add_argument("--json", action="store_true", help="print JSON")
        if name == "calibrate":
            p.add_argument("--epochs", type=int, default=3, help="ABMIL training epochs (default 3)")
            p.add_argument("--lr", type=float, default=1e-3, help="ABMIL learning rate (default 1e-3)")
            p.add_argument("--train-seed", type=int, default=0, help="training seed (default 0)")
            p.add_argument(
                "--zoom", type=float, default=0.2, help="zoom budget as a fraction of N (default 0.2)"
            )
        p.set_defaults(func=func)
