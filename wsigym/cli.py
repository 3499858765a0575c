"""wsigym: Gymnasium environments for where-to-zoom agents on whole-slide images.

Each area adds its own subcommands:

- ``wsigym data ...``   feature folders: describe, convert to the native format (:mod:`wsigym.data.cli`)
- ``wsigym synth ...``  the embedded ``synth-c16`` benchmark: build, describe (:mod:`wsigym.data.synth.cli`),
  calibrate (:mod:`wsigym.calibration.cli`)
- ``wsigym env ...``    inspect, render and roll out ``WSIZoom-v0`` (:mod:`wsigym.envs.cli`)
- ``wsigym train ppo``  the sampling policy (:mod:`wsigym.agents.cli`; HAFED and TSU train with ``zoo train``)
- ``wsigym evaluate``   the benchmark protocol (:mod:`wsigym.agents.cli`)
- ``wsigym slides ...`` slide files -> features, thumbnails (:mod:`wsigym.slides.cli`)
- ``wsigym demo``       the main job on the embedded default

A user error (bad data, a missing file, a bad argument value) prints one line naming the file, key or
argument and exits with status 2; ``wsigym --debug ...`` (or ``WSIGYM_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

AREAS = (
    "wsigym.data.cli",
    "wsigym.data.synth.cli",
    "wsigym.calibration.cli",
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
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("WSIGYM_DEBUG", "").strip() not in ("", "0"),
        help="show the full traceback of an error instead of one line (also WSIGYM_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for area in AREAS:
        importlib.import_module(area).add_subcommands(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report bad input rather than a bug: ``ValueError`` (``DataError``, a bad value,
    JSON/UTF-8 decoding), ``OSError`` (missing, unreadable or read-only files, the network) and
    Gymnasium's own errors (an unknown environment id, a bad registration)."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    try:
        from gymnasium.error import Error as GymnasiumError

        errors.append(GymnasiumError)
    except ImportError:  # pragma: no cover - gymnasium is a dependency
        pass
    return tuple(errors)


def _command_name(args: argparse.Namespace) -> str:
    words = [args.command]
    words += [v for k, v in vars(args).items() if k.endswith("_command") and isinstance(v, str)]
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsigym`` console script; returns the exit status (2 for a user error, with
    one line on stderr)."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("wsigym: --threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except user_errors() as e:
        if args.debug:
            raise
        print(f"wsigym {_command_name(args)}: error: {str(e) or type(e).__name__}", file=sys.stderr)
        return 2
