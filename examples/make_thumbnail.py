"""Write examples/thumbnail_cmu_small_region.png: the real CMU-1-Small-Region slide with its tissue
contours (green), the kept 5x 256 px patches (blue) and their 20x children on tissue (light blue).

Run from the repository root: ``.venv/bin/python examples/make_thumbnail.py``.
"""

from __future__ import annotations

from pathlib import Path

from wsigym.slides.grid import plan_patches
from wsigym.slides.reader import open_slide
from wsigym.slides.thumbnail import save_thumbnail
from wsigym.slides.tissue import segment_tissue

ROOT = Path(__file__).resolve().parent.parent
SLIDE = ROOT.parent / "shared" / "data" / "slides" / "cmu_small_region.svs"
OUT = ROOT / "examples" / "thumbnail_cmu_small_region.png"


def main() -> None:
    slide = open_slide(SLIDE)
    tissue = segment_tissue(slide)
    plan = plan_patches(slide, tissue, lr_mag=5, hr_mag=20, patch_size=256)
    info = slide.info()
    print(
        f"{slide.name}: {info['level_dimensions'][0]} px, mpp {info['mpp']}, base {info['base_magnification']:g}x; "
        f"tissue {tissue.tissue_fraction_total:.1%} of the slide; {plan.n} low-res patches at 5x "
        f"({plan.patch_size_level0} level-0 px), {int(plan.hr_mask.sum())}/{plan.n * plan.k} children on tissue"
    )
    save_thumbnail(slide, OUT, tissue=tissue, plan=plan, max_size=1024)
    print(OUT)


if __name__ == "__main__":
    main()
