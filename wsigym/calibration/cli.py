"""``wsigym synth calibrate``: the calibration report of a synth-c16 variant (:mod:`wsigym.calibration`)."""

from __future__ import annotations

import argparse

from wsigym.data.synth.cli import add_common_arguments, open_variant, synth_commands


def _calibrate(args: argparse.Namespace) -> int:
    from wsigym.calibration.calibrate import calibrate
    from wsigym.calibration.tables import format_report

    ds = open_variant(args)
    report = calibrate(
        ds,
        views=args.part in ("all", "views"),
        state_update=args.part in ("all", "state-update"),
        epochs=args.epochs,
        seed=args.train_seed,
        zoom_fraction=args.zoom,
        lr=args.lr,
        hafed=args.hafed,
        tsu=args.tsu,
        budgets=args.budgets,
        seeds=args.seeds,
        progress=not args.quiet,
        path=args.out,
    )
    print(format_report(report))
    print(f"saved to {args.out or ds.calibration_path}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``wsigym synth calibrate``."""
    p = synth_commands(sub).add_parser(
        "calibrate",
        help="train hr/lr ABMIL and zoom references, measure what the state update tells HAFED; "
        "save calibration.json",
    )
    add_common_arguments(p)
    p.add_argument(
        "--part",
        choices=("all", "views", "state-update"),
        default="all",
        help="views: hr/lr ABMIL and zoom references; state-update: same-kind rate, f_S errors and "
        "the fixed-agent table (default all)",
    )
    p.add_argument("--epochs", type=int, default=3, help="ABMIL training epochs (default 3)")
    p.add_argument("--lr", type=float, default=1e-3, help="ABMIL learning rate (default 1e-3)")
    p.add_argument("--train-seed", type=int, default=0, help="ABMIL training seed (default 0)")
    p.add_argument(
        "--zoom", type=float, default=0.2, help="zoom budget of the ABMIL references (default 0.2)"
    )
    p.add_argument("--hafed", default=None, help="HAFED of the environment (default: the env's)")
    p.add_argument("--tsu", default=None, help="f_S of the environment (default: the env's)")
    p.add_argument(
        "--budgets", type=float, nargs="+", default=[0.1, 0.2], help="fixed-agent budgets (default 0.1 0.2)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="random-agent seeds (default 0 1 2)"
    )
    p.add_argument(
        "--out", default=None, help="report path (default: calibration.json in the dataset's cache)"
    )
    p.set_defaults(func=_calibrate)
