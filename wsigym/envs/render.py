"""Rendering of a zoom episode as an RGB image of the slide's patch grid.

Two panels over the same grid (one cell per low-res patch, placed by its level-0 corner):

- **left, "zooms"**: tissue in grey-pink, TSU-updated patches in blue, zoomed patches in orange to
  yellow by zoom order (numbered when the cells are large enough);
- **right, "attention"**: HAFED's current branch-averaged attention (viridis, scaled to its max),
  zoomed patches outlined in white.

Both outline ground-truth tumour patches (tumour fraction > 0) in green when the slide has it.
A header gives the slide, its label, HAFED's prediction and probability, and the zoom count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TISSUE = (222, 200, 212)
UPDATED = (110, 160, 225)
TUMOUR = (0, 170, 60)
TEXT = (20, 20, 20)
HEADER = 34
LEGEND = 22
GAP = 12
TARGET_PANEL = 420


def _viridis(x: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["viridis"](np.clip(x, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def _zoom_colour(rank: float) -> tuple[int, int, int]:
    """Orange (first zoom) to yellow (last)."""
    return (235, int(90 + 140 * rank), int(20 + 40 * rank))


def render_frame(
    grid: np.ndarray,
    order: np.ndarray,
    updated: np.ndarray,
    attention: np.ndarray,
    tumour: np.ndarray | None,
    header: str,
) -> np.ndarray:
    """Draw one frame.

    Args:
        grid: ``(N, 2)`` integer cells ``(col, row)`` of the patches.
        order: ``(N,)`` zoom order (0-based), -1 where not zoomed.
        updated: ``(N,)`` bool, state-updated (TSU) patches; zoomed ones are drawn as zoomed.
        attention: ``(N,)`` attention weights.
        tumour: ``(N,)`` tumour fraction, or None / NaN when unknown.
        header: the text line above the panels.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    grid = np.asarray(grid, dtype=np.int64)
    cols, rows = int(grid[:, 0].max()) + 1, int(grid[:, 1].max()) + 1
    cell = int(np.clip(TARGET_PANEL // max(cols, rows), 2, 28))
    pw, ph = cols * cell, rows * cell
    width = max(2 * pw + 3 * GAP, 360)
    height = HEADER + ph + LEGEND + GAP
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((GAP, 4), header, fill=TEXT, font=font)
    left, right, top = GAP, 2 * GAP + pw, HEADER
    draw.text((left, top - 14), "zooms (orange, numbered) + TSU-updated (blue)", fill=TEXT, font=font)
    draw.text((right, top - 14), "HAFED attention", fill=TEXT, font=font)
    att = np.asarray(attention, dtype=np.float64)
    att_col = _viridis(att / att.max() if att.max() > 0 else att)
    truth = None if tumour is None else np.asarray(tumour, dtype=np.float64)
    if truth is not None and not np.isfinite(truth).all():
        truth = None
    n_zoom = int(order.max()) + 1 if order.size and order.max() >= 0 else 0
    for i, (c, r) in enumerate(grid):
        x0, y0 = c * cell, top + r * cell
        box_l = (left + x0, y0, left + x0 + cell - 1, y0 + cell - 1)
        box_r = (right + x0, y0, right + x0 + cell - 1, y0 + cell - 1)
        if order[i] >= 0:
            colour = _zoom_colour(order[i] / max(1, n_zoom - 1))
        elif updated[i]:
            colour = UPDATED
        else:
            colour = TISSUE
        draw.rectangle(box_l, fill=colour)
        draw.rectangle(box_r, fill=tuple(int(v) for v in att_col[i]))
        if truth is not None and truth[i] > 0 and cell >= 4:
            draw.rectangle(box_l, outline=TUMOUR)
            draw.rectangle(box_r, outline=TUMOUR)
        if order[i] >= 0:
            if cell >= 4:
                draw.rectangle(box_r, outline=(255, 255, 255))
            if cell >= 14:
                draw.text((box_l[0] + 2, box_l[1] + 1), str(int(order[i]) + 1), fill=TEXT, font=font)
    ly = top + ph + 6
    x = GAP
    for label, colour in (("tissue", TISSUE), ("TSU-updated", UPDATED), ("zoomed", _zoom_colour(0.0))) + (
        (("tumour (truth)", TUMOUR),) if truth is not None else ()
    ):
        draw.rectangle((x, ly, x + 10, ly + 10), fill=colour)
        draw.text((x + 14, ly), label, fill=TEXT, font=font)
        x += 22 + 7 * len(label)
    return np.asarray(img, dtype=np.uint8)


def render_episode(batch: Any, env: int, title: str, class_names: Sequence[str]) -> np.ndarray:
    """Render episode ``env`` of a :class:`~wsigym.envs.zoom_batch.ZoomBatch`."""
    src = batch.source
    k, n = int(batch.slide[env]), int(batch.n[env])
    info = batch.infos()
    pred = int(info["prediction"][env])
    prob = float(info["probability"][env, pred])
    label = int(info["label"][env])
    header = (
        f"{title}  label={class_names[label]}  HAFED: {class_names[pred]} ({prob:.2f})  "
        f"zooms {int(batch.zooms[env])}/{int(batch.steps_budget[env])}  N={n}"
    )
    return render_frame(
        grid=src.grid[src.rows(k)],
        order=batch.order[env, :n],
        updated=batch.updated_np[env, :n].astype(bool),
        attention=batch.attention()[env, :n],
        tumour=batch.tumour_np[env, :n],
        header=header,
    )
