"""``wsigym data ...``: describe and convert datasets.

- ``wsigym data describe DATASET [--fold F]``
- ``wsigym data convert SRC OUT [--format auto|clam|trident|sasha|native] [--labels CSV] [--encoder E]
  [--lr-mag M] [--hr-mag M] [--lr-only] [--splits DIR] [--patch-size-level0 P] [--hr-root DIR]
  [--hr-patch-size-level0 C] [--dtype float16|float32]``

``DATASET``/``SRC`` is a registered name (``synth-c16-tiny``) or a folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wsigym.data.formats import LAYOUTS, NAMED_DATASETS


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``data`` with its ``describe`` and ``convert`` subcommands on the ``wsigym`` parser."""
    data = sub.add_parser("data", help="datasets: describe, convert feature folders")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    p = data_sub.add_parser("describe", help="slide/class counts, split sizes, bag sizes of a dataset")
    p.add_argument("dataset", help=f"dataset folder or name ({', '.join(sorted(NAMED_DATASETS))})")
    p.add_argument("--fold", type=int, default=0, help="fold whose split sizes to show (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_describe)

    p = data_sub.add_parser("convert", help="convert a dataset to the native wsigym format")
    p.add_argument("src", help="source folder or dataset name")
    p.add_argument("out", help="output folder (resumes an unfinished conversion)")
    p.add_argument(
        "--format", default="auto", choices=("auto", *LAYOUTS), help="layout of SRC (default: detect)"
    )
    p.add_argument("--labels", default=None, help="labels CSV (CLAM/TRIDENT): slide_id,label or wsi,label")
    p.add_argument("--splits", default=None, help="folder of splits_<k>.csv or split_<n>.json")
    p.add_argument("--encoder", default=None, help="TRIDENT features_<encoder> to read")
    p.add_argument("--lr-mag", type=float, default=5.0, help="TRIDENT low-res magnification (default 5)")
    p.add_argument("--hr-mag", type=float, default=20.0, help="TRIDENT high-res magnification (default 20)")
    p.add_argument("--lr-only", action="store_true", help="TRIDENT: no high-res children")
    p.add_argument("--patch-size-level0", type=int, default=256, help="CLAM: low-res patch side (level-0 px)")
    p.add_argument("--hr-root", default=None, help="CLAM: feature folder of the high-res children")
    p.add_argument("--hr-patch-size-level0", type=int, default=None, help="CLAM: child side (level-0 px)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="feature storage type")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_convert)


def cmd_describe(args: argparse.Namespace) -> int:
    """Print :func:`~wsigym.data.describe.describe` of ``args.dataset``."""
    from wsigym.data.describe import describe, format_description
    from wsigym.data.formats import open_dataset

    d = describe(open_dataset(args.dataset), fold=args.fold)
    print(json.dumps(d, indent=2) if args.json else format_description(d))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Open ``args.src`` with the chosen layout and write it to ``args.out`` in the native format."""
    from wsigym.data.convert import ConvertReport, convert
    from wsigym.data.formats import detect_layout, open_dataset, open_layout

    if args.src in NAMED_DATASETS:
        dataset = open_dataset(args.src)
    else:
        layout = detect_layout(args.src) if args.format == "auto" else args.format
        kw: dict[str, object] = {}
        if layout in ("clam", "trident"):
            kw["labels_csv"] = args.labels
        if layout in ("clam", "trident", "sasha"):
            kw["splits_dir"] = args.splits
        if layout == "trident":
            kw.update(encoder=args.encoder, lr_mag=args.lr_mag, hr_mag=None if args.lr_only else args.hr_mag)
        if layout == "clam":
            kw.update(
                patch_size_level0=args.patch_size_level0,
                hr_root=args.hr_root,
                hr_patch_size_level0=args.hr_patch_size_level0,
                lr_magnification=args.lr_mag,
                hr_magnification=args.hr_mag,
            )
        dataset = open_layout(Path(args.src), layout, **kw)
    report = ConvertReport()
    out = convert(dataset, args.out, dtype=args.dtype, progress=not args.no_progress, report=report)
    print(
        f"wrote {out} ({len(report.written)} slides written, {len(report.skipped)} already complete, "
        f"{len(report.removed_temp)} stale temp files removed)"
    )
    return 0
