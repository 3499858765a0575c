"""``describe``: what a built synth-c16 holds, next to the real CAMELYON16 annotations it draws from.

Lesions are counted the same way for both: 8-connected components of tumour-bearing 512 px children
(the real sources rasterised at their own orientation). A slide is "micro only" when its largest
lesion spans under 2 mm (the CAMELYON16 macro-metastasis threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from wsigym.calibration.tables import format_report
from wsigym.data.synth.dataset import SynthC16
from wsigym.data.synth.geometry import MPP, TumourGeometry, fine_to_children
from wsigym.data.synth.layout import CHILD_PX, CPS, FINE_PER_CHILD

_STRUCT = np.ones((3, 3), dtype=bool)


def lesion_stats(child_counts: np.ndarray) -> tuple[int, float]:
    """(number of lesions, largest lesion extent in um) of a child-grid tumour count map."""
    labels, n = ndimage.label(child_counts > 0, structure=_STRUCT)
    if n == 0:
        return 0, 0.0
    ext = max(max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndimage.find_objects(labels))
    return n, float(ext * CHILD_PX * MPP)


def _child_map(layout: Any) -> np.ndarray:
    g = layout.grid
    h, w = int(g[:, 1].max()) + 1, int(g[:, 0].max()) + 1
    m = np.zeros((h * CPS, w * CPS), dtype=np.int32)
    j = np.arange(CPS * CPS)
    rows = g[:, 1:2] * CPS + j // CPS
    cols = g[:, 0:1] * CPS + j % CPS
    m[rows, cols] = layout.tumour_counts
    return m


def _q(values: Any, fmt: str = "{:.0f}") -> str:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return "-"
    qs = np.quantile(v, [0.0, 0.1, 0.5, 0.9, 1.0])
    return (
        "min "
        + " / p10 ".join([fmt.format(qs[0]), fmt.format(qs[1])])
        + " / median "
        + fmt.format(qs[2])
        + (" / p90 " + fmt.format(qs[3]) + " / max " + fmt.format(qs[4]))
    )


def describe(dataset: SynthC16) -> dict[str, Any]:
    """Statistics of ``dataset`` and of the real annotations, as a JSON-ready dict."""
    slides = dataset.manifest["slides"]
    fold0 = dataset.splits[0]
    counts = {
        split: {name: sum(dataset.label(s) == c for s in ids) for c, name in enumerate(dataset.class_names)}
        for split, ids in fold0.items()
    }
    n_all = [s["n"] for s in slides]
    synth = {
        "tumour_share_of_tissue": [],
        "tumour_mm2": [],
        "lesions": [],
        "largest_um": [],
        "patch_share": [],
    }
    for s in slides:
        if not s["label"]:
            continue
        lay = dataset.layout(s["id"])
        tf = lay.tumour_fraction()
        synth["tumour_share_of_tissue"].append(
            float(lay.tumour_counts.sum(dtype=np.int64) / (lay.hr_mask.sum() * FINE_PER_CHILD**2))
        )
        synth["tumour_mm2"].append(s["tumour_um2"] / 1e6)
        synth["patch_share"].append(float((tf > 0).mean()))
        n_les, largest = lesion_stats(_child_map(lay))
        synth["lesions"].append(n_les)
        synth["largest_um"].append(largest)
    geo: TumourGeometry = dataset.geometry
    used = sorted({s["source"] for s in slides if s["label"]})
    idx = (
        [geo.names.index(n) for n in used]
        if dataset.config.tumour_window_lr is None
        else list(range(len(geo)))
    )
    real = {"tumour_mm2": (geo.area_um2[idx] / 1e6).tolist(), "lesions": [], "largest_um": []}
    for i in idx:
        m = geo.mask(i)
        h, w = (
            -(-m.shape[0] // FINE_PER_CHILD) * FINE_PER_CHILD,
            -(-m.shape[1] // FINE_PER_CHILD) * FINE_PER_CHILD,
        )
        padded = np.zeros((h, w), dtype=bool)
        padded[: m.shape[0], : m.shape[1]] = m
        n_les, largest = lesion_stats(fine_to_children(padded, FINE_PER_CHILD))
        real["lesions"].append(n_les)
        real["largest_um"].append(largest)
    by_split_source = {
        split: sorted({s["source"] for s in slides if s["label"] and s["split"] == split})
        for split in ("train", "test")
    }
    return {
        "name": dataset.name,
        "seed": dataset.seed,
        "config_digest": dataset.config.digest(),
        "cache_dir": str(dataset.cache_dir),
        "slides_fold0": counts,
        "n_patches": {
            "all": n_all,
            "normal": [s["n"] for s in slides if not s["label"]],
            "tumour": [s["n"] for s in slides if s["label"]],
        },
        "synth_positive": synth,
        "real_sources": real,
        "geometry_sources": {k: len(v) for k, v in by_split_source.items()},
        "geometry_sources_disjoint": not (set(by_split_source["train"]) & set(by_split_source["test"])),
        "build_seconds": dataset.manifest["build_seconds"],
        "disk_bytes": dataset.manifest["disk_bytes"],
        "calibration": dataset.calibration(),
    }


def format_description(d: dict[str, Any]) -> str:
    """Human-readable text of :func:`describe`'s dict."""
    syn, real = d["synth_positive"], d["real_sources"]
    lines = [
        f"{d['name']} (seed {d['seed']}, config {d['config_digest']})  cache: {d['cache_dir']}",
        "features: SIMULATED (wsigym.data.synth.generator); tumour geometry: REAL CAMELYON16 annotations",
        "slides (fold 0): "
        + ", ".join(
            f"{sp} {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in c.items())})"
            for sp, c in d["slides_fold0"].items()
        ),
        f"tumour geometry sources: train {d['geometry_sources']['train']}, test {d['geometry_sources']['test']}, "
        f"disjoint: {d['geometry_sources_disjoint']}",
        f"N (5x patches) all     : {_q(d['n_patches']['all'])}",
        f"N normal slides        : {_q(d['n_patches']['normal'])}",
        f"N tumour slides        : {_q(d['n_patches']['tumour'])}",
        "positive slides                        synth                                      real sources",
        f"  tumour area (mm2)    : {_q(syn['tumour_mm2'], '{:.3g}'):44s} | {_q(real['tumour_mm2'], '{:.3g}')}",
        f"  lesions per slide    : {_q(syn['lesions']):44s} | {_q(real['lesions'])}",
        f"  largest lesion (um)  : {_q(syn['largest_um']):44s} | {_q(real['largest_um'])}",
        f"  micro-only share (<2mm): synth {np.mean(np.array(syn['largest_um']) < 2000):.2f} | "
        f"real {np.mean(np.array(real['largest_um']) < 2000):.2f}",
        f"  tumour share of tissue : {_q(syn['tumour_share_of_tissue'], '{:.2g}')}",
        f"  share of patches with tumour: {_q(syn['patch_share'], '{:.2g}')}",
        f"build time {d['build_seconds']:.1f} s, disk {d['disk_bytes'] / 1e6:.1f} MB",
    ]
    cal = d.get("calibration")
    lines.append(format_report(cal) if cal else "calibration: none saved (run `wsigym synth calibrate`)")
    return "\n".join(lines)
