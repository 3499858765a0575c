"""wsigym: Gymnasium environments for where-to-zoom agents on whole-slide images.

Each area adds its own subcommands:

- ``wsigym data ...``   feature folders: describe, convert to the native format (:mod:`wsigym.data.cli`)
- ``wsigym synth ...``  the embedded ``synth-c16`` benchmark: build, describe, calibrate
  (:mod:`wsigym.data.synth.cli`)
- ``wsigym env ...``    inspect, render and roll out ``WSIZoom-v0`` (:mod:`wsigym.envs.cli`)
- ``wsigym train ppo``  the sampling policy (:mod:`wsigym.agents.cli`; HAFED and TSU train with ``zoo train``)
- ``wsigym evaluate``   the benchmark protocol (:mod:`wsigym.agents.cli`)
- ``wsigym slides ...`` slide files -> features, thumbnails (:mod:`wsigym.slides.cli`)
- ``wsigym demo``       the main job on the embedded default
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

AREAS = (
    "wsigym.data.cli",
    "wsigym.data.synth.cli",
    "wsigym.envs.cli",
    "wsigym.agents.cli",
    "wsigym.slides.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsigym", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's). Use 1 when another job shares the cores: "
        "oversubscribed threads slow the small per-step tensor ops of the environment by 10x or more",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for area in AREAS:
        importlib.import_module(area).add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("wsigym: --threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    return int(args.func(args) or 0)
