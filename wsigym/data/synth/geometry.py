"""Real CAMELYON16 tumour geometry: polygons -> a compact shipped raster, and its placement on a grid.

The source is the NCRF conversion of the CAMELYON16 expert annotations (Apache-2.0, notice in
``wsigym/data/assets/CAMELYON16_ANNOTATIONS_LICENSE``): one JSON per ``Tumor_*`` slide with
``positive`` polygons (tumour) and ``negative`` polygons (normal regions excluded from a tumour
annotation), in level-0 pixels of the 40x scans (about 0.243 um/px).

:func:`build_geometry_asset` (run once by the maintainers, ``python -m wsigym.data.synth.geometry``)
rasterises every tumour slide onto a fine grid of ``FINE_CELL = 64`` level-0 px (15.6 um) by
point sampling at cell centres (inside some positive polygon and inside no negative one, even-odd
rule per polygon; a polygon that covers no cell centre still marks the cell holding its centroid, so
no lesion is lost), crops to the tumour bounding box and stores the bit-packed masks with
``numpy.savez_compressed`` (about 1 MB for the 110 slides). It also stores the exact per-slide
statistics of the polygons (area by the shoelace formula, lesion count, largest lesion extent) so
``describe`` can compare the simulated slides with the real annotations.

A 512 px high-res child holds ``8 x 8`` fine cells, so tumour area fractions are exact to 1/64 of
a child and 1/1024 of a 2048 px low-res patch, up to the 64 px sampling of the polygons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsigym.errors import DataError

FINE_CELL = 64
"""Side of one cell of the shipped tumour raster, in level-0 pixels (40x)."""
MPP = 0.243
"""Microns per level-0 pixel of the CAMELYON16 40x scans."""
ASSET_NAME = "c16_tumour_geometry.npz"
LICENSE_NAME = "CAMELYON16_ANNOTATIONS_LICENSE"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"


def _polygon_area(v: np.ndarray) -> float:
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def rasterise_polygon(
    vertices: np.ndarray, origin: tuple[int, int], shape: tuple[int, int], cell: int
) -> np.ndarray:
    """Even-odd fill of one polygon sampled at cell centres.

    Args:
        vertices: ``(V, 2)`` level-0 ``(x, y)`` vertices (closed implicitly).
        origin: level-0 ``(x0, y0)`` of cell ``(0, 0)``'s top-left corner.
        shape: ``(rows, cols)`` of the grid.
        cell: cell side in level-0 px.

    Returns:
        bool ``(rows, cols)``: True where the cell centre ``(x0 + (c + 1/2) cell, y0 + (r + 1/2) cell)``
        lies inside the polygon. Each edge crossing a row of centres toggles the parity from the first
        centre right of the crossing onwards (a cumulative XOR along the row).
    """
    rows, cols = shape
    v = np.asarray(vertices, dtype=np.float64)
    # grid units, with centres at integers
    gx = (v[:, 0] - origin[0]) / cell - 0.5
    gy = (v[:, 1] - origin[1]) / cell - 0.5
    x0, y0, x1, y1 = gx, gy, np.roll(gx, -1), np.roll(gy, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    # rows r with lo <= r < hi (half-open: a vertex on a row is counted once)
    r_start = np.ceil(lo).astype(np.int64)
    r_stop = np.ceil(hi).astype(np.int64)
    counts = np.clip(r_stop - r_start, 0, None)
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    if counts.sum() == 0:
        return np.zeros(shape, dtype=bool)
    edge = np.repeat(np.arange(len(gx)), counts)
    r = r_start[edge] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    t = (r - y0[edge]) / (y1[edge] - y0[edge])
    x = x0[edge] + t * (x1[edge] - x0[edge])
    c = np.clip(np.ceil(x).astype(np.int64), 0, cols)
    keep = (r >= 0) & (r < rows)
    np.add.at(toggles, (r[keep], c[keep]), 1)
    return (np.cumsum(toggles, axis=1)[:, :cols] % 2).astype(bool)


def rasterise_slide(positive: list[np.ndarray], negative: list[np.ndarray], cell: int = FINE_CELL):
    """Tumour mask of one slide on a ``cell``-px grid cropped to the tumour bounding box.

    Returns:
        ``(mask (H, W) bool, origin (x0, y0) level-0 int)``.
    """
    allv = np.concatenate(positive)
    x0 = int(np.floor(allv[:, 0].min() / cell)) * cell
    y0 = int(np.floor(allv[:, 1].min() / cell)) * cell
    w = int(np.ceil((allv[:, 0].max() - x0) / cell)) + 1
    h = int(np.ceil((allv[:, 1].max() - y0) / cell)) + 1
    mask = np.zeros((h, w), dtype=bool)

    def sub(poly: np.ndarray) -> tuple[slice, slice, np.ndarray]:
        px0 = max(0, int(np.floor((poly[:, 0].min() - x0) / cell)))
        py0 = max(0, int(np.floor((poly[:, 1].min() - y0) / cell)))
        px1 = min(w, int(np.ceil((poly[:, 0].max() - x0) / cell)) + 1)
        py1 = min(h, int(np.ceil((poly[:, 1].max() - y0) / cell)) + 1)
        m = rasterise_polygon(poly, (x0 + px0 * cell, y0 + py0 * cell), (py1 - py0, px1 - px0), cell)
        return slice(py0, py1), slice(px0, px1), m

    for poly in positive:
        sy, sx, m = sub(poly)
        if not m.any():  # smaller than a cell: keep the lesion at its centroid
            cx, cy = poly.mean(axis=0)
            mask[min(h - 1, int((cy - y0) // cell)), min(w - 1, int((cx - x0) // cell))] = True
        mask[sy, sx] |= m
    for poly in negative:
        if len(poly) < 3:
            continue
        sy, sx, m = sub(poly)
        mask[sy, sx] &= ~m
    return mask, (x0, y0)


def _read_annotation(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    try:
        doc = json.loads(path.read_text())
        pos = [np.asarray(p["vertices"], dtype=np.float64) for p in doc["positive"]]
        neg = [np.asarray(p["vertices"], dtype=np.float64) for p in doc.get("negative", [])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            path, f"expected NCRF annotation JSON with 'positive' polygon vertices ({exc})"
        ) from exc
    pos = [p for p in pos if p.ndim == 2 and p.shape[0] >= 3 and p.shape[1] == 2]
    return pos, neg


def build_geometry_asset(annotations_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Rasterise every ``jsons/{train,valid}/Tumor_*.json`` and write the compact asset (atomic).

    Keys of the ``.npz``: ``names (S,)``, ``source_split (S,)`` (``train``/``valid`` folder),
    ``origin (S, 2)`` level-0 top-left of each crop, ``shape (S, 2)`` rows/cols, ``offsets (S+1,)``
    into ``bits`` (``np.packbits`` of each row-major mask), ``cell`` (64), and the exact polygon
    statistics ``area_um2 (S,)``, ``n_lesions (S,)``, ``largest_extent_um (S,)``,
    ``lesion_extent_um (L,)``, ``lesion_area_um2 (L,)``, ``lesion_slide (L,)``.
    """
    root = Path(annotations_dir)
    files = sorted((root / "jsons").glob("*/Tumor_*.json"), key=lambda p: p.stem)
    if not files:
        raise DataError(root, "no jsons/*/Tumor_*.json annotation files found")
    out = Path(out_path) if out_path is not None else ASSET_DIR / ASSET_NAME
    names, splits, origins, shapes, chunks = [], [], [], [], []
    area, nles, largest, l_ext, l_area, l_slide = [], [], [], [], [], []
    for i, f in enumerate(files):
        pos, neg = _read_annotation(f)
        if not pos:
            continue
        mask, origin = rasterise_slide(pos, neg)
        names.append(f.stem)
        splits.append(f.parent.name)
        origins.append(origin)
        shapes.append(mask.shape)
        chunks.append(np.packbits(mask.ravel()))
        ext = [float((p.max(0) - p.min(0)).max()) * MPP for p in pos]
        ar = [_polygon_area(p) * MPP**2 for p in pos]
        neg_area = sum(_polygon_area(p) * MPP**2 for p in neg if len(p) >= 3)
        area.append(sum(ar) - neg_area)
        nles.append(len(pos))
        largest.append(max(ext))
        l_ext += ext
        l_area += ar
        l_slide += [i] * len(pos)
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        names=np.array(names),
        source_split=np.array(splits),
        origin=np.array(origins, dtype=np.int64),
        shape=np.array(shapes, dtype=np.int64),
        offsets=offsets,
        bits=np.concatenate(chunks),
        cell=np.int64(FINE_CELL),
        area_um2=np.array(area),
        n_lesions=np.array(nles, dtype=np.int64),
        largest_extent_um=np.array(largest),
        lesion_extent_um=np.array(l_ext),
        lesion_area_um2=np.array(l_area),
        lesion_slide=np.array(l_slide, dtype=np.int64),
    )
    tmp.replace(out)
    return out


@dataclass(frozen=True)
class TumourGeometry:
    """The shipped tumour rasters of the real CAMELYON16 tumour slides.

    Attributes:
        names: source slide names (``Tumor_001`` ...), shape ``(S,)``.
        cell: raster cell side in level-0 px (64).
        area_um2, n_lesions, largest_extent_um: exact polygon statistics per source slide.
    """

    names: tuple[str, ...]
    source_split: tuple[str, ...]
    origin: np.ndarray
    shape: np.ndarray
    offsets: np.ndarray
    bits: np.ndarray
    cell: int
    area_um2: np.ndarray
    n_lesions: np.ndarray
    largest_extent_um: np.ndarray
    lesion_extent_um: np.ndarray

    @classmethod
    def load(cls, path: str | Path | None = None) -> TumourGeometry:
        """Read the asset (default: the one shipped in ``wsigym/data/assets``).

        Raises:
            DataError: when the file is missing or lacks a key.
        """
        p = Path(path) if path is not None else ASSET_DIR / ASSET_NAME
        if not p.is_file():
            raise DataError(p, "the synth-c16 tumour geometry asset is missing (reinstall wsigym)")
        try:
            with np.load(p, allow_pickle=False) as z:
                return cls(
                    names=tuple(str(s) for s in z["names"]),
                    source_split=tuple(str(s) for s in z["source_split"]),
                    origin=z["origin"],
                    shape=z["shape"],
                    offsets=z["offsets"],
                    bits=z["bits"],
                    cell=int(z["cell"]),
                    area_um2=z["area_um2"],
                    n_lesions=z["n_lesions"],
                    largest_extent_um=z["largest_extent_um"],
                    lesion_extent_um=z["lesion_extent_um"],
                )
        except KeyError as exc:
            raise DataError(p, f"geometry asset lacks key {exc}") from exc

    def __len__(self) -> int:
        return len(self.names)

    def mask(self, i: int) -> np.ndarray:
        """bool ``(H, W)`` tumour raster of source slide ``i`` (cells of ``self.cell`` px)."""
        h, w = (int(s) for s in self.shape[i])
        bits = self.bits[self.offsets[i] : self.offsets[i + 1]]
        return np.unpackbits(bits, count=h * w).astype(bool).reshape(h, w)


def place_mask(mask: np.ndarray, rot90: int, flip: bool) -> np.ndarray:
    """Rotate a raster by ``rot90`` quarter turns and optionally mirror it (keeps the grid exact)."""
    m = np.rot90(mask, rot90)
    return np.ascontiguousarray(m[:, ::-1] if flip else m)


def fine_to_children(mask: np.ndarray, per_child: int) -> np.ndarray:
    """Sum a fine raster into child cells: ``(H, W) bool -> (H/p, W/p) int`` counts of tumour cells.

    ``H`` and ``W`` must be multiples of ``per_child``.
    """
    h, w = mask.shape
    return mask.reshape(h // per_child, per_child, w // per_child, per_child).sum(axis=(1, 3))


if __name__ == "__main__":  # maintainers: regenerate the shipped asset
    import sys

    src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/camelyon16-annotations"
    print(build_geometry_asset(src))
