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
    font = ImageFont.load_default(size=12)
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
    """Render episode ``env`` of a :class:`~wsigym.envs.zoom_batch.ZoomBatch`.

    Live slides (a source with ``thumbnail``) are drawn on the real slide (:func:`render_on_thumbnail`),
    cached features on the patch grid (:func:`render_frame`).
    """
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
    if hasattr(src, "thumbnail"):
        plan = src.plan(k)
        image, ds = src.thumbnail(k)
        return render_on_thumbnail(
            image,
            ds,
            coords=plan.coords,
            size_level0=plan.patch_size_level0,
            order=batch.order[env, :n],
            updated=batch.updated_np[env, :n].astype(bool),
            attention=batch.attention()[env, :n],
            tumour=batch.tumour_np[env, :n],
            header=header,
        )
    return render_frame(
        grid=src.cells(k),
        order=batch.order[env, :n],
        updated=batch.updated_np[env, :n].astype(bool),
        attention=batch.attention()[env, :n],
        tumour=batch.tumour_np[env, :n],
        header=header,
    )


def _legend(
    draw: ImageDraw.ImageDraw, x: int, y: int, items: Sequence[tuple[str, tuple[int, int, int]]]
) -> None:
    font = ImageFont.load_default(size=12)
    for label, colour in items:
        draw.rectangle((x, y, x + 10, y + 10), fill=colour)
        draw.text((x + 14, y), label, fill=TEXT, font=font)
        x += 22 + 7 * len(label)


def render_on_thumbnail(
    image: np.ndarray,
    downsample: float,
    coords: np.ndarray,
    size_level0: int,
    order: np.ndarray,
    updated: np.ndarray,
    attention: np.ndarray,
    tumour: np.ndarray | None,
    header: str,
) -> np.ndarray:
    """Draw one frame of a live episode on the slide's thumbnail.

    Two copies of the thumbnail side by side. Left, "zooms": every low-res patch outlined in grey,
    TSU-updated patches tinted blue, zoomed patches outlined orange (first) to yellow (last) and
    numbered, ground-truth tumour patches (fraction > 0) outlined green. Right, "attention": HAFED's
    current attention (viridis, scaled to its max) blended over each patch, zoomed patches outlined white.

    Args:
        image: ``uint8 (h, w, 3)`` thumbnail; pixel ``(i, j)`` covers level-0 ``(j * ds, i * ds)``.
        downsample: ``ds``, level-0 px per thumbnail px.
        coords: ``(N, 2)`` level-0 top-left corners of the low-res patches.
        size_level0: low-res patch side in level-0 px.
        order, updated, attention, tumour, header: as :func:`render_frame`.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    base = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    w, h = base.size
    side = max(1.0, size_level0 / downsample)
    boxes = [
        (x / downsample, y / downsample, x / downsample + side - 1, y / downsample + side - 1)
        for x, y in np.asarray(coords, dtype=np.float64)
    ]
    truth = None if tumour is None else np.asarray(tumour, dtype=np.float64)
    if truth is not None and not np.isfinite(truth).all():
        truth = None
    att = np.asarray(attention, dtype=np.float64)
    att_col = _viridis(att / att.max() if att.max() > 0 else att)
    n_zoom = int(order.max()) + 1 if order.size and order.max() >= 0 else 0
    font = ImageFont.load_default(size=12)
    line = max(1, round(side / 40))

    # left: zooms + TSU updates
    left = base.copy()
    tint = Image.new("RGBA", left.size, (0, 0, 0, 0))
    tdraw = ImageDraw.Draw(tint)
    for i, box in enumerate(boxes):
        if updated[i] and order[i] < 0:
            tdraw.rectangle(box, fill=(*UPDATED, 110))
    left = Image.alpha_composite(left.convert("RGBA"), tint).convert("RGB")
    ldraw = ImageDraw.Draw(left)
    for box in boxes:
        ldraw.rectangle(box, outline=(150, 150, 150), width=1)
    if truth is not None:
        for i, box in enumerate(boxes):
            if truth[i] > 0:
                pad = 3 * line + 1  # inside a zoom outline
                inner = (box[0] + pad, box[1] + pad, box[2] - pad, box[3] - pad)
                ldraw.rectangle(inner, outline=TUMOUR, width=line)
    label_size = int(np.clip(side / 4, 8, 24))
    number_font = ImageFont.load_default(size=label_size)
    for i in np.argsort(order):
        if order[i] < 0:
            continue
        colour = _zoom_colour(order[i] / max(1, n_zoom - 1))
        ldraw.rectangle(boxes[i], outline=colour, width=2 * line + 1)
        if side >= 14:
            text = str(int(order[i]) + 1)
            x0, y0 = boxes[i][0] + 2 * line + 1, boxes[i][1] + 2 * line + 1
            tw = ldraw.textlength(text, font=number_font)
            ldraw.rectangle((x0, y0, x0 + tw + 4, y0 + label_size + 3), fill=colour)
            ldraw.text((x0 + 2, y0), text, fill=TEXT, font=number_font)

    # right: attention
    right = Image.fromarray((np.asarray(base, dtype=np.float32) * 0.55 + 255 * 0.45).astype(np.uint8))
    heat = Image.new("RGBA", right.size, (0, 0, 0, 0))
    hdraw = ImageDraw.Draw(heat)
    for i, box in enumerate(boxes):
        hdraw.rectangle(box, fill=(*(int(v) for v in att_col[i]), 190))
    right = Image.alpha_composite(right.convert("RGBA"), heat).convert("RGB")
    rdraw = ImageDraw.Draw(right)
    for i, box in enumerate(boxes):
        if order[i] >= 0:
            rdraw.rectangle(box, outline=(255, 255, 255), width=line)

    width = max(2 * w + 3 * GAP, 360)
    height = HEADER + h + LEGEND + GAP
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((GAP, 4), header, fill=TEXT, font=font)
    top = HEADER
    draw.text(
        (GAP, top - 14), "zooms (orange -> yellow, numbered) + TSU-updated (blue)", fill=TEXT, font=font
    )
    draw.text((2 * GAP + w, top - 14), "HAFED attention", fill=TEXT, font=font)
    img.paste(left, (GAP, top))
    img.paste(right, (2 * GAP + w, top))
    items: list[tuple[str, tuple[int, int, int]]] = [
        ("patch", (150, 150, 150)),
        ("TSU-updated", UPDATED),
        ("zoomed", _zoom_colour(0.0)),
    ]
    if truth is not None:
        items.append(("tumour (truth)", TUMOUR))
    _legend(draw, GAP, top + h + 6, items)
    return np.asarray(img, dtype=np.uint8)
