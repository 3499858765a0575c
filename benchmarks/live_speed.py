"""Seconds per slide of SASHA-style inference on a live slide vs full high-res extraction, and disk sizes.

On ONE synthetic pyramidal Aperio TIFF (:func:`wsigym.slides.synthetic_slides.write_aperio_tiff`, default
16384 x 16384 px at 0.25 um/px = 40x: an 8 x 8 grid of 5x patches of which the tissue keeps ``N``),
with ONE encoder and ONE random-init HAFED / TSU of matching width, in one run:

(1) **low-res pass only**: a fresh ``WSIZoom-v0(slides=...)`` (tissue segmentation + patch grid)
    and its ``reset`` (``Z``: ``N`` patches read at 5x and encoded, HAFED on ``S_0``);
(2) **SASHA-style inference at 10 % and 20 %**: the same low-res pass, then
    ``T = ceil(f N)`` zooms, each reading the 16 children of the patch at 20x, encoding them,
    HAFED level 1 (``V(a)``), the TSU and the classifier (:mod:`wsigym.envs.live_source`). Actions are
    random legal patches (a policy network's cost is negligible next to the encoder's);
(3) **full high-res extraction**: tissue + grid, read and encode all ``N x 16`` children
    (:func:`wsigym.slides.extract` internals, as ``extract_features`` does), HAFED on ``U``.

Printed: seconds per slide of each, the ratio (3) / (2) (the SASHA paper's speed-up; goal >= 5x at
10 %), and the disk size of the cached state (``Z``, ``N x d``, the TRIDENT features file the live
env writes) against all high-res features (``N x 16 x d``, the TRIDENT file of (3)) with the ratio.
Nothing is cached between (1), (2) and (3): each builds a fresh environment without ``cache_dir``.

Run: ``.venv/bin/python benchmarks/live_speed.py`` (``--encoder vit_small_patch16_224`` for a
ViT-S/16-sized encoder as in SASHA; ``--help`` for size, threads, repeats).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import zoo
from wsigym.envs.zoom import WSIZoomEnv
from wsigym.slides.encoders import timm_encoder
from wsigym.slides.extract import encode_patches, output_paths, write_h5
from wsigym.slides.grid import plan_patches
from wsigym.slides.reader import SlideReader
from wsigym.slides.synthetic_slides import write_aperio_tiff
from wsigym.slides.tissue import segment_tissue


def low_res_pass(slide: Path, label: dict, encoder, hafed, tsu, budget: float) -> WSIZoomEnv:
    env = WSIZoomEnv(
        slides=[slide], labels=label, encoder=encoder, hafed=hafed, tsu=tsu, budget=budget, progress=False
    )
    env.reset(seed=0)
    return env


def sasha(
    slide: Path, label: dict, encoder, hafed, tsu, budget: float, seed: int
) -> tuple[WSIZoomEnv, float]:
    """Low-res pass + ``ceil(budget N)`` live zooms; returns the env and the seconds spent zooming."""
    env = low_res_pass(slide, label, encoder, hafed, tsu, budget)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    done = False
    while not done:
        a = int(rng.choice(np.flatnonzero(env.action_masks())))
        _, _, term, trunc, _ = env.step(a)
        done = term or trunc
    return env, time.perf_counter() - t0


def full_high_res(slide: Path, encoder, hafed, batch_size: int) -> tuple[np.ndarray, object, float]:
    """Tissue + grid + all children encoded + HAFED on ``U``; returns ``(U (N*k, d), plan, logits)``."""
    reader = SlideReader(slide).open()
    tissue = segment_tissue(reader)
    plan = plan_patches(reader, tissue)
    u = encode_patches(reader, plan, "hr", encoder, batch_size, progress=False)
    with torch.no_grad():
        ut = torch.as_tensor(u).reshape(plan.n, plan.k, -1)
        v = hafed.aggregate(ut, torch.as_tensor(plan.hr_mask))
        logits = hafed.classify(v[None])["logits"]
    reader.close()
    return u, plan, logits


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="level-0 side of the synthetic slide (px)")
    ap.add_argument("--mpp", type=float, default=0.25, help="microns per level-0 px (0.25 = 40x)")
    ap.add_argument("--encoder", default="vit_tiny_patch16_224", help="timm model name (random init)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeats", type=int, default=1, help="repeat each measurement, report the median")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "wsigym-live-bench"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"synthetic_{args.size}_{args.mpp:g}_s{args.seed}.svs"
    if not slide.exists():
        t0 = time.perf_counter()
        write_aperio_tiff(slide, width=args.size, height=args.size, mpp=args.mpp, seed=args.seed)
        print(f"wrote {slide} in {time.perf_counter() - t0:.1f} s")
    torch.manual_seed(args.seed)
    encoder = timm_encoder(args.encoder, name=f"{args.encoder}_rand")
    hafed = zoo.create_model("hafed", in_dim=encoder.dim).eval()
    tsu = zoo.create_model("tsu", in_dim=encoder.dim).eval()
    label = {slide.stem: 1}
    encoder(np.zeros((4, 256, 256, 3), np.uint8))  # warm-up (allocations, first-call overheads)
    zooms_done: dict[float, tuple[int, int]] = {}

    # repeats are interleaved ((1), (2), (2'), (3), then again) so that load changes hit every stage
    times: dict[object, list[float]] = {"lr": [], 0.1: [], 0.2: [], "full": []}
    zoom_times: dict[float, list[float]] = {0.1: [], 0.2: []}
    for _ in range(args.repeats):
        env1, t = timed(low_res_pass, slide, label, encoder, hafed, tsu, 0.1)
        times["lr"].append(t)
        for f in (0.1, 0.2):
            (env, t_zoom), t = timed(sasha, slide, label, encoder, hafed, tsu, f, args.seed)
            times[f].append(t)
            zoom_times[f].append(t_zoom)
            zooms_done[f] = (int(env.batch.zooms[0]), env.source.counters["hr_encoded"])
        (u, plan, _), t = timed(full_high_res, slide, encoder, hafed, args.batch_size)
        times["full"].append(t)
    med = {key: float(np.median(v)) for key, v in times.items()}
    t_lr, t_full = med["lr"], med["full"]
    n, k = env1.source.n_list[0], env1.source.plan(0).k
    assert plan.n == n
    results = {
        f: (med[f], float(np.median(zoom_times[f])), zooms_done[f][0], zooms_done[f][1]) for f in (0.1, 0.2)
    }

    # disk: the cached state (Z, N x d) vs all high-res features (N x k x d), both TRIDENT files
    z = env1.source.features(0).numpy()
    paths = output_paths(work / "job", slide.stem, encoder.name, 5, 20, 256)
    write_h5(paths["lr_features"], plan, "lr", slide.stem, args.mpp, z, encoder.name)
    write_h5(paths["hr_features"], plan, "hr", slide.stem, args.mpp, u, encoder.name)
    size_z, size_u = paths["lr_features"].stat().st_size, paths["hr_features"].stat().st_size

    d = encoder.dim
    print(
        f"\nslide: synthetic Aperio TIFF {args.size}x{args.size} px at {args.mpp:g} um/px "
        f"({10 / args.mpp:g}x); N = {n} low-res patches at 5x (256 px), k = {k} children at 20x"
    )
    print(
        f"encoder: timm {args.encoder} (random init), d = {d}, {encoder.input_size} px input; "
        f"torch threads = {args.threads}, CPU; median of {args.repeats} run(s)\n"
    )
    rows = [("(1) low-res pass only (tissue + grid + Z)", t_lr, 0, n)]
    for f, (t, _, zooms, hr) in results.items():
        rows.append((f"(2) SASHA-{f:g}: low-res + {zooms} live zooms", t, zooms, n + hr))
    rows.append(("(3) full high-res extraction + HAFED", t_full, n, n * k))
    print(f"{'stage':<46}{'s/slide':>9}{'zooms':>7}{'images':>8}{'(3) / this':>12}")
    for name, t, zooms, images in rows:
        print(f"{name:<46}{t:>9.2f}{zooms:>7}{images:>8}{t_full / t:>11.2f}x")
    for f, (_, t_zoom, zooms, _) in results.items():
        print(f"  SASHA-{f:g}: {t_zoom:.2f} s in zooms = {t_zoom / max(1, zooms):.3f} s per zoom")
    s10 = t_full / results[0.1][0]
    print(
        f"\nspeed-up full high-res / SASHA-0.1 = {s10:.2f}x (goal >= 5x: {'met' if s10 >= 5 else 'NOT met'}); "
        f"/ SASHA-0.2 = {t_full / results[0.2][0]:.2f}x; / low-res only = {t_full / t_lr:.2f}x"
    )
    raw_z32, raw_z16, raw_u32 = n * d * 4, n * d * 2, n * k * d * 4
    print(
        f"\ndisk: cached state Z (N x d) = {raw_z32 / 1024:.1f} KiB float32 ({raw_z16 / 1024:.1f} KiB float16); "
        f"all high-res features (N x {k} x d) = {raw_u32 / 1024:.1f} KiB float32 -> "
        f"{raw_u32 / raw_z32:.1f}x (float16 state: {raw_u32 / raw_z16:.1f}x)"
    )
    print(
        f"      TRIDENT files: {paths['lr_features'].name} at 5x {size_z / 1024:.1f} KiB vs at 20x "
        f"{size_u / 1024:.1f} KiB -> compression {size_u / size_z:.1f}x"
    )
    print(f"      (files under {paths['lr_features'].parents[2]})")


if __name__ == "__main__":
    main()
