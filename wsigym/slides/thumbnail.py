"""PNG thumbnails: the slide, its tissue contours and the patch grid.

Drawn on a thumbnail whose long side is ``max_size`` px: tissue contours (green, from
:meth:`TissueMask.boundary`), kept low-res patches (blue squares), and optionally the high-res children
on tissue (thin light-blue squares). Without magnification metadata (and no ``mpp=``) only the contours
are drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsigym.errors import DataError
from wsigym.io import atomic_write
from wsigym.slides.grid import PatchPlan, plan_patches
from wsigym.slides.reader import SlideReader, open_slide
from wsigym.slides.tissue import TissueMask, segment_tissue

CONTOUR = (0, 170, 0)
PATCH = (20, 60, 230)
CHILD = (120, 170, 255)


def render_thumbnail(
    slide: SlideReader | str | os.PathLike[str],
    *,
    max_size: int = 1024,
    mpp: float | None = None,
    tissue: TissueMask | None = None,
    plan: PatchPlan | None = None,
    lr_mag: float = 5.0,
    hr_mag: float = 20.0,
    patch_size: int = 256,
    min_tissue: float = 0.25,
    show_children: bool = True,
) -> Image.Image:
    """An RGB PIL image of the slide with tissue contours and the patch grid.

    Segments the tissue and plans the patches unless ``tissue`` / ``plan`` are given.
    """
    s = open_slide(slide, mpp=mpp)
    w0, h0 = s.dimensions
    ds = max(1.0, max(w0, h0) / max_size)
    img = Image.fromarray(s.read_downsampled(ds))
    tissue = tissue if tissue is not None else segment_tissue(s)
    if plan is None:
        try:
            plan = plan_patches(
                s, tissue, lr_mag=lr_mag, hr_mag=hr_mag, patch_size=patch_size, min_tissue=min_tissue
            )
        except DataError:
            plan = None  # no magnification: contours only
    # contours: boundary pixels of the mask, scaled to the thumbnail and thickened
    edge = Image.fromarray(tissue.boundary().astype(np.uint8) * 255).resize(
        img.size, Image.Resampling.NEAREST
    )
    edge_arr = np.asarray(edge) > 0
    from scipy import ndimage

    edge_arr = ndimage.binary_dilation(edge_arr, iterations=1)
    arr = np.asarray(img).copy()
    arr[edge_arr] = CONTOUR
    img = Image.fromarray(arr)
    if plan is not None:
        draw = ImageDraw.Draw(img)
        if show_children:
            c = plan.hr_patch_size_level0 / ds
            for (x, y), valid in zip(plan.hr_coords.reshape(-1, 2), plan.hr_mask.reshape(-1)):
                if valid:
                    draw.rectangle([x / ds, y / ds, x / ds + c, y / ds + c], outline=CHILD, width=1)
        p = plan.patch_size_level0 / ds
        for x, y in plan.coords:
            draw.rectangle([x / ds, y / ds, x / ds + p, y / ds + p], outline=PATCH, width=2)
    return img


def save_thumbnail(
    slide: SlideReader | str | os.PathLike[str], out: str | os.PathLike[str], **kwargs: object
) -> Path:
    """:func:`render_thumbnail` written as PNG (temp file in the same folder, then renamed)."""
    img = render_thumbnail(slide, **kwargs)  # type: ignore[arg-type]
    return atomic_write(out, lambda tmp: img.save(tmp, format="PNG"))
