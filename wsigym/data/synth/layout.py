"""One simulated slide's spatial latents: tissue, real tumour geometry, phenotype and mimic maps.

Everything lives on the 20x child grid (512 level-0 px cells); a 5x low-res patch is a 4 x 4 block
of children (2048 px). Steps for one slide (all random choices from the slide's own generator):

1. Target size ``N*`` ~ log-normal (``SynthConfig.n_median``, ``n_sigma``), clipped.
2. Positive slides: the real tumour raster of one source slide (64 px cells, see
   :mod:`wsigym.data.synth.geometry`), optionally cropped to a window (tiny config), rotated by a random
   quarter turn, maybe mirrored, shifted by a random 0-7 fine-cell offset and summed into children:
   ``tumour_counts`` = number of the 64 fine cells of a child that are tumour.
3. Tissue: 1-4 fragments, each an ellipse (random axes ratio and angle) with a boundary perturbed by a
   smooth random field, total area about ``N*`` patches; on positive slides the first fragment is
   centred on a random tumour child, every lesion cluster not yet covered gets a fragment of its own
   and the tumour dilated by 3 children is always tissue (tumour never lies off tissue).
4. A low-res patch is kept when at least 4 of its 16 children are tissue, or when it holds tumour;
   ``hr_mask`` marks its children on tissue.
5. Phenotypes: ``K`` smooth Gaussian random fields (sigma ``smoothness`` children) give each child soft
   phenotype weights ``w = softmax(2 F)``; with probability ``mimic_slide_prob`` a further smooth field
   thresholded at the ``1 - mimic_area`` quantile of the tissue gives a soft mimic map ``m`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsigym.data.synth.config import SynthConfig
from wsigym.data.synth.geometry import TumourGeometry, fine_to_children, place_mask

CPS = 4
"""Children per side of a low-res patch (5x -> 20x)."""
K_CHILD = CPS * CPS
FINE_PER_CHILD = 8
"""Fine 64 px raster cells per side of a 512 px child."""
CHILD_PX = 512
LR_PX = CHILD_PX * CPS


@dataclass
class SlideLayout:
    """Compact latents of one slide (what the cache stores).

    Attributes:
        grid: ``(N, 2)`` int32 low-res patch position ``(col, row)`` in 2048 px units.
        hr_mask: ``(N, 16)`` bool, children on tissue; children are row-major inside the patch.
        tumour_counts: ``(N, 16)`` uint8, tumour fine cells (of 64) per child.
        phenotype: ``(N, 16, K)`` float16 soft phenotype weights (rows sum to 1).
        mimic: ``(N, 16)`` float16 mimic intensity in [0, 1].
        origin: level-0 ``(x, y)`` of grid cell ``(0, 0)``.
        source: real source slide of the tumour geometry ("" for negatives).
    """

    grid: np.ndarray
    hr_mask: np.ndarray
    tumour_counts: np.ndarray
    phenotype: np.ndarray
    mimic: np.ndarray
    origin: tuple[int, int]
    source: str

    @property
    def n(self) -> int:
        return int(self.grid.shape[0])

    def hr_tumour_fraction(self) -> np.ndarray:
        """``(N, 16)`` float32 tumour area fraction of each child."""
        return self.tumour_counts.astype(np.float32) / FINE_PER_CHILD**2

    def tumour_fraction(self) -> np.ndarray:
        """``(N,)`` float32 tumour area fraction of each low-res patch (of its whole 2048 px square)."""
        return self.tumour_counts.sum(axis=1, dtype=np.int64).astype(np.float32) / (
            K_CHILD * FINE_PER_CHILD**2
        )

    def coords(self) -> np.ndarray:
        """``(N, 2)`` int64 level-0 top-left ``(x, y)`` of each low-res patch."""
        return self.grid.astype(np.int64) * LR_PX + np.asarray(self.origin, dtype=np.int64)

    def hr_coords(self) -> np.ndarray:
        """``(N, 16, 2)`` int64 level-0 top-left of each child (row-major inside the patch)."""
        j = np.arange(K_CHILD)
        off = np.stack([j % CPS, j // CPS], axis=1).astype(np.int64) * CHILD_PX
        return self.coords()[:, None, :] + off[None]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian random field with correlation length ``sigma`` cells."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def _blob(shape, centre, area, rng, noise) -> np.ndarray:
    """Ellipse of ``area`` cells at ``centre`` with a boundary perturbed by the ``noise`` field."""
    ratio = rng.uniform(1.0, 2.5)
    a = np.sqrt(area / np.pi * ratio)
    b = np.sqrt(area / np.pi / ratio)
    th = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dx, dy = xx - centre[1], yy - centre[0]
    u = (dx * np.cos(th) + dy * np.sin(th)) / a
    v = (-dx * np.sin(th) + dy * np.cos(th)) / b
    return np.sqrt(u * u + v * v) + 0.25 * noise < 1.0


def _tumour_children(
    geometry: TumourGeometry, source: int, cfg: SynthConfig, rng: np.random.Generator
) -> np.ndarray:
    """Tumour counts on the child grid (uint8, cropped to the tumour) for one placement of a source."""
    m = geometry.mask(source)
    if cfg.tumour_window_lr is not None:
        win = cfg.tumour_window_lr * CPS * FINE_PER_CHILD
        ys, xs = np.nonzero(m)
        i = rng.integers(len(ys))
        y0 = int(np.clip(ys[i] - rng.integers(win), 0, max(0, m.shape[0] - win)))
        x0 = int(np.clip(xs[i] - rng.integers(win), 0, max(0, m.shape[1] - win)))
        m = m[y0 : y0 + win, x0 : x0 + win]
    m = place_mask(m, int(rng.integers(4)), bool(rng.integers(2)))
    oy, ox = (int(v) for v in rng.integers(FINE_PER_CHILD, size=2))
    h = -(-(m.shape[0] + oy) // FINE_PER_CHILD) * FINE_PER_CHILD
    w = -(-(m.shape[1] + ox) // FINE_PER_CHILD) * FINE_PER_CHILD
    padded = np.zeros((h, w), dtype=bool)
    padded[oy : oy + m.shape[0], ox : ox + m.shape[1]] = m
    counts = fine_to_children(padded, FINE_PER_CHILD)
    rows, cols = np.nonzero(counts)
    return counts[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(np.uint8)


def simulate_layout(
    cfg: SynthConfig, geometry: TumourGeometry, source: int | None, rng: np.random.Generator
) -> SlideLayout:
    """Simulate one slide's latents (see the module docstring). ``source=None`` makes a negative slide."""
    n_target = float(
        np.clip(np.exp(np.log(cfg.n_median) + cfg.n_sigma * rng.standard_normal()), cfg.n_min, cfg.n_max)
    )
    area = n_target * K_CHILD * 0.8  # tissue children; edge patches are partly empty
    tumour = None if source is None else _tumour_children(geometry, source, cfg, rng)
    th, tw = (0, 0) if tumour is None else tumour.shape
    side = int(np.ceil(max(np.sqrt(area) * 2.2, th + 24, tw + 24)))
    side = -(-side // CPS) * CPS
    shape = (side, side)
    tum = np.zeros(shape, dtype=np.uint8)
    if tumour is not None:
        ty = int(rng.integers(12, side - th - 11))
        tx = int(rng.integers(12, side - tw - 11))
        tum[ty : ty + th, tx : tx + tw] = tumour
    noise = _smooth_field(rng, shape, max(2.0, np.sqrt(area) / 10))
    n_frag = 1 + int(rng.binomial(3, 0.35))
    areas = area * rng.dirichlet(np.full(n_frag, 2.0))
    tissue = np.zeros(shape, dtype=bool)
    ty_all, tx_all = np.nonzero(tum)
    for f in range(n_frag):
        if f == 0 and len(ty_all):
            j = rng.integers(len(ty_all))
            centre = (ty_all[j], tx_all[j])
        else:
            r = np.sqrt(areas[f] / np.pi)
            centre = tuple(rng.uniform(r, max(r + 1, side - r), size=2))
        tissue |= _blob(shape, centre, areas[f], rng, noise)
    if len(ty_all):
        lesion = tum > 0
        clusters, _ = ndimage.label(ndimage.binary_dilation(lesion, iterations=6))
        for c, sl in enumerate(ndimage.find_objects(clusters), start=1):
            inside = lesion[sl] & (clusters[sl] == c)
            if tissue[sl][inside].mean() >= 0.5:
                continue
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            centre = ((sl[0].start + sl[0].stop) / 2, (sl[1].start + sl[1].stop) / 2)
            tissue |= _blob(shape, centre, np.pi * (h / 2 + 6) * (w / 2 + 6), rng, noise)
        tissue |= ndimage.binary_dilation(lesion, iterations=3)
    # crop to whole low-res patches around the tissue
    rows, cols = np.nonzero(tissue)
    r0, c0 = (rows.min() // CPS) * CPS, (cols.min() // CPS) * CPS
    r1, c1 = -(-(rows.max() + 1) // CPS) * CPS, -(-(cols.max() + 1) // CPS) * CPS
    tissue, tum = tissue[r0:r1, c0:c1], tum[r0:r1, c0:c1]
    h, w = tissue.shape
    k = cfg.n_phenotypes
    fields = np.stack([_smooth_field(rng, (h, w), cfg.smoothness) for _ in range(k)], axis=-1)
    weights = np.exp(2.0 * (fields - fields.max(axis=-1, keepdims=True)))
    weights /= weights.sum(axis=-1, keepdims=True)
    mimic = np.zeros((h, w), dtype=np.float32)
    if rng.random() < cfg.mimic_slide_prob and cfg.mimic_area > 0:
        g = _smooth_field(rng, (h, w), cfg.smoothness * 1.5)
        q = float(np.quantile(g[tissue], 1.0 - cfg.mimic_area))
        mimic = np.clip((g - q) / 0.3 + 0.5, 0.0, 1.0) * tissue

    def blocks(a: np.ndarray) -> np.ndarray:  # (h, w, ...) -> (h/4, w/4, 16, ...)
        rest = a.shape[2:]
        b = a.reshape(h // CPS, CPS, w // CPS, CPS, *rest).swapaxes(1, 2)
        return b.reshape(h // CPS, w // CPS, K_CHILD, *rest)

    t_blocks, c_blocks = blocks(tissue), blocks(tum)
    keep = (t_blocks.sum(axis=2) >= 4) | (c_blocks.sum(axis=2) > 0)
    gr, gc = np.nonzero(keep)
    origin_px = rng.integers(8, 40, size=2) * LR_PX
    return SlideLayout(
        grid=np.stack([gc, gr], axis=1).astype(np.int32),
        hr_mask=t_blocks[gr, gc] | (c_blocks[gr, gc] > 0),
        tumour_counts=c_blocks[gr, gc].astype(np.uint8),
        phenotype=blocks(weights)[gr, gc].astype(np.float16),
        mimic=blocks(mimic)[gr, gc].astype(np.float16),
        origin=(int(origin_px[0]), int(origin_px[1])),
        source="" if source is None else geometry.names[source],
    )
