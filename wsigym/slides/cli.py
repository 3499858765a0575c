"""``wsigym slides ...``: slide info, thumbnails, feature extraction.

- ``wsigym slides info SLIDE [--mpp X]``: JSON summary (levels, mpp, objective power, magnification).
- ``wsigym slides thumbnail SLIDE --out PNG [--mpp X] [--lr-mag 5] [--hr-mag 20] [--patch-size 256]``
- ``wsigym slides extract SLIDES... --job-dir DIR --encoder timm:NAME|open_clip:NAME [--weights FILE]
  [--lr-mag 5] [--hr-mag 20] [--patch-size 256] [--batch-size 32] [--mpp X] [--min-tissue 0.25]
  [--device cpu] [--seed 0] [--skip-errors] [--overwrite] [--no-progress]
  [--backend ray [--address A] [--workers N]]`` (``--backend ray``: one Ray task per slide, N at once,
  the encoder loaded once per worker process, :mod:`wsigym.distributed.extraction`)

``extract`` records the encoder's identity (name, weights SHA-256, preprocessing, weights source) in
every features file and in ``features_<encoder>/encoder.json``; rerunning into a job folder made by
another network (other ``--weights``, another ``--seed`` without weights) is refused unless
``--overwrite``. Without ``--weights`` the network is randomly initialised from ``--seed``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any

from wsigym.distributed.cluster import add_backend_arguments


def _info(args: argparse.Namespace) -> int:
    from wsigym.slides.reader import SlideReader

    print(json.dumps(SlideReader(args.slide, mpp=args.mpp).open().info(), indent=2))
    return 0


def _thumbnail(args: argparse.Namespace) -> int:
    from wsigym.slides.thumbnail import save_thumbnail

    out = save_thumbnail(
        args.slide,
        args.out,
        mpp=args.mpp,
        lr_mag=args.lr_mag,
        hr_mag=args.hr_mag,
        patch_size=args.patch_size,
        max_size=args.max_size,
    )
    print(out)
    return 0


def _extract(args: argparse.Namespace) -> int:
    import torch

    from wsigym.distributed.cluster import connect_from_args
    from wsigym.slides.encoders import build_encoder
    from wsigym.slides.extract import encoder_identity, extract_folder

    slides = args.slides[0] if len(args.slides) == 1 else args.slides
    if args.workers is not None and args.backend != "ray":
        raise ValueError("--workers is only used with --backend ray")
    distributed = connect_from_args(args) is not None
    torch.manual_seed(args.seed)  # the initialisation of every weight the --weights do not set
    # on Ray the network is built here on the CPU, put in the object store once, moved to --device once
    # per worker
    encoder = build_encoder(args.encoder, args.weights, device="cpu" if distributed else args.device)
    if args.weights is not None:
        source = str(args.weights)
    elif "hf-hub:" in args.encoder:
        source = args.encoder.split(":", 1)[1]
    else:
        source = f"random initialisation (torch seed {args.seed})"
    if distributed:
        from wsigym.distributed.extraction import extract_folder_ray

        run: Any = functools.partial(extract_folder_ray, device=args.device, workers=args.workers)
    else:
        run = extract_folder
    done, failed = run(
        slides,
        args.job_dir,
        encoder,
        mpp=args.mpp,
        on_error="skip" if args.skip_errors else "raise",
        progress=not args.no_progress,
        lr_mag=args.lr_mag,
        hr_mag=args.hr_mag,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        min_tissue=args.min_tissue,
        overwrite=args.overwrite,
        identity=encoder_identity(encoder, weights=source),
    )
    for name, paths in done.items():
        print(f"{name}: {paths['lr_features']} {paths['hr_features']}")
    for name, msg in failed.items():
        print(f"FAILED {name}: {msg}", file=sys.stderr)
    return 1 if failed else 0


def _add_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mpp", type=float, default=None, help="microns per level-0 pixel (overrides the file)")
    p.add_argument("--lr-mag", type=float, default=5.0, help="low-res magnification (default 5)")
    p.add_argument("--hr-mag", type=float, default=20.0, help="high-res magnification (default 20)")
    p.add_argument("--patch-size", type=int, default=256, help="patch side in px (default 256)")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the ``wsigym`` parser."""
    slides = sub.add_parser("slides", help="slide files -> features, thumbnails")
    ssub = slides.add_subparsers(dest="slides_command", required=True)

    p = ssub.add_parser("info", help="print a slide's levels, mpp and magnification as JSON")
    p.add_argument("slide")
    p.add_argument("--mpp", type=float, default=None)
    p.set_defaults(func=_info)

    p = ssub.add_parser("thumbnail", help="PNG with tissue contours and the patch grid")
    p.add_argument("slide")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--max-size", type=int, default=1024, help="long side of the PNG in px")
    _add_geometry(p)
    p.set_defaults(func=_thumbnail)

    p = ssub.add_parser("extract", help="tissue -> patches -> features (TRIDENT layout)")
    p.add_argument("slides", nargs="+", help="slide files or one folder")
    p.add_argument("--job-dir", required=True)
    p.add_argument("--encoder", required=True, help="timm:NAME, timm:hf-hub:ORG/REPO or open_clip:NAME")
    p.add_argument("--weights", default=None, help="local weights file (or open_clip pretrained tag)")
    _add_geometry(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--min-tissue", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="torch seed of the random initialisation of weights --weights does not set (default 0), "
        "so a rerun without --weights builds the same network and can resume",
    )
    p.add_argument("--skip-errors", action="store_true", help="go on after a bad slide (exit status 1)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute existing files, also when the job folder records another encoder",
    )
    p.add_argument("--no-progress", action="store_true")
    add_backend_arguments(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --backend ray: slides extracted at once, each worker process loading the encoder once "
        "(default: as many as the cluster holds, 1 CPU each or 1 GPU each with --device cuda; at most "
        "one per slide)",
    )
    p.set_defaults(func=_extract)
