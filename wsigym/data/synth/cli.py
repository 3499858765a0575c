"""``wsigym synth build|describe``: the embedded synth-c16 benchmark.

``wsigym synth calibrate`` trains zoo models, so it is registered by :mod:`wsigym.calibration.cli` into
the same group (:func:`synth_commands`); the data layer imports no model.
"""

from __future__ import annotations

import argparse
import json
import time

from wsigym.data.synth.config import SynthConfig
from wsigym.data.synth.dataset import SynthC16


def _build(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ds = open_variant(args)
    m = ds.manifest
    print(
        f"{ds.name}: {len(ds)} slides in {ds.cache_dir} ({m['disk_bytes'] / 1e6:.1f} MB, "
        f"built in {m['build_seconds']:.1f} s; opened in {time.perf_counter() - start:.1f} s)"
    )
    return 0


def _describe(args: argparse.Namespace) -> int:
    from wsigym.data.synth.describe import describe, format_description

    d = describe(open_variant(args))
    print(json.dumps(d, default=float) if args.json else format_description(d))
    return 0


VARIANTS = {
    "synth-c16": SynthConfig,
    "synth-c16-tiny": SynthConfig.tiny,
    "synth-c16-incoherent": lambda: SynthConfig(coherence=0.0),
}


def open_variant(args: argparse.Namespace) -> SynthC16:
    """The synth-c16 variant the parsed ``wsigym synth`` options name (built on first use)."""
    name = "synth-c16-tiny" if args.tiny else args.variant
    return SynthC16(
        seed=args.seed, config=VARIANTS[name](), cache_dir=args.cache_dir, progress=not args.quiet, name=name
    )


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options every ``wsigym synth`` command takes (which benchmark, where its cache is)."""
    p.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default under $WSIGYM_CACHE or ~/.cache)")
    p.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="synth-c16",
        help="synth-c16 (default), synth-c16-incoherent (no within-slide coherence) or synth-c16-tiny",
    )
    p.add_argument(
        "--tiny", action="store_true", help="the small synth-c16-tiny config (= --variant synth-c16-tiny)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def synth_commands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The subcommand group of ``wsigym synth`` (created on first use)."""
    if "synth" not in sub.choices:
        synth = sub.add_parser(
            "synth", help="the embedded synth-c16 benchmark (real geometry, simulated features)"
        )
        synth.set_defaults(_group=synth.add_subparsers(dest="synth_command", required=True))
    return sub.choices["synth"].get_default("_group")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``wsigym synth build|describe``."""
    group = synth_commands(sub)
    for name, func, text in (
        ("build", _build, "build (or reuse) the cache of synth-c16"),
        ("describe", _describe, "slides, N and tumour statistics vs the real annotations, calibration"),
    ):
        p = group.add_parser(name, help=text)
        add_common_arguments(p)
        if name == "describe":
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
