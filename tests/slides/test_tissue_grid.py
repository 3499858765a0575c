from __future__ import annotations

import numpy as np
import pytest

from wsigym.errors import DataError
from wsigym.slides.grid import child_coords, grid_coords, plan_patches
from wsigym.slides.synthetic_slides import tumour_fraction
from wsigym.slides.tissue import TissueMask, otsu_threshold, segment_image, segment_tissue


def _pink_square_image() -> np.ndarray:
    """White 200x200 image: a pink square with a small and a large hole, plus a tiny speck."""
    img = np.full((200, 200, 3), 245, np.uint8)
    img[40:160, 40:160] = (225, 140, 190)
    img[60:63, 60:63] = 245  # small hole (9 px)
    img[90:140, 90:140] = 245  # large hole (2500 px)
    img[5:7, 5:7] = (225, 140, 190)  # speck
    return img


def test_otsu_threshold_splits_bimodal_values():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(20, 5, 5000), rng.normal(150, 10, 5000)]).clip(0, 255).astype(np.uint8)
    t = otsu_threshold(v)
    assert 40 < t < 130
    assert otsu_threshold(np.full(100, 7, np.uint8)) == 0.0


@pytest.mark.parametrize("method", ["saturation", "otsu"])
def test_segment_image_cleans_specks_and_small_holes(method):
    # downsample 1, reference patch 10 px: a_t=1 -> pieces < 100 px dropped, a_h=1 -> holes < 100 px filled
    tm = segment_image(_pink_square_image(), 1.0, method=method, a_t=1, a_h=1, ref_patch_size=10, mthresh=3)
    m = tm.mask
    assert m.dtype == np.bool_ and m.shape == (200, 200)
    assert not m[5:7, 5:7].any()  # speck removed
    assert m[61, 61]  # small hole filled
    assert not m[100:130, 100:130].any()  # large hole kept
    assert m[50, 50] and not m[20, 20]
    assert tm.boundary()[40, 100] and not tm.boundary()[100, 60]


def test_tissue_fraction_of_squares():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    tm = TissueMask(mask, downsample=4.0, threshold=8)
    fr = tm.fraction(np.array([[0, 0], [20, 0], [12, 0], [100, 100]]), 20)
    assert fr == pytest.approx([1.0, 0.0, 0.4, 0.0])


def test_grid_and_children_geometry():
    g = grid_coords((5000, 3000), 1024)
    assert g.shape == (4 * 2, 2) and g.dtype == np.int64
    assert g[:5].tolist() == [[0, 0], [1024, 0], [2048, 0], [3072, 0], [0, 1024]]
    ch = child_coords(np.array([[2048, 1024]]), 1024, 4)
    assert ch.shape == (1, 16, 2)
    assert ch[0, 0].tolist() == [2048, 1024]
    assert ch[0, 1].tolist() == [2048 + 256, 1024]  # row-major: next column
    assert ch[0, 4].tolist() == [2048, 1024 + 256]  # next row
    assert ch[0, 15].tolist() == [2048 + 768, 1024 + 768]
    with pytest.raises(ValueError, match="cannot be cut"):
        child_coords(np.zeros((1, 2), np.int64), 1000, 3)


def test_synthetic_slide_plan_covers_tumour(synthetic):
    tissue = segment_tissue(synthetic.path)
    assert tissue.downsample == 8.0 and 0.2 < tissue.tissue_fraction_total < 0.8
    plan = plan_patches(synthetic.path, tissue, lr_mag=5, hr_mag=20, patch_size=256)
    assert plan.patch_size_level0 == 2048 and plan.hr_patch_size_level0 == 512 and plan.k == 16
    assert plan.n >= 6
    assert (plan.tissue_fraction >= 0.25).all()
    assert plan.hr_mask.any(axis=1).all()  # every kept parent has a valid child
    # children on tissue by flag agree with their fractions
    assert ((plan.hr_tissue_fraction >= 0.25) == plan.hr_mask).mean() > 0.98
    # ground truth: the big tumour ellipse overlaps kept patches, all tumour lies in tissue
    tf = tumour_fraction(synthetic.tumour_regions, plan.coords, 2048, synthetic.width, synthetic.height)
    assert tf.max() > 0.3
    tumour_children = tumour_fraction(
        synthetic.tumour_regions, plan.hr_coords, 512, synthetic.width, synthetic.height
    )
    assert tumour_children.shape == (plan.n, 16)
    assert plan.hr_mask[tumour_children > 0.5].all()


def test_plan_needs_magnification(tcga):
    tissue = segment_tissue(tcga)
    with pytest.raises(DataError, match="mpp="):
        plan_patches(tcga, tissue)
    plan = plan_patches(tcga, tissue, mpp=0.5)
    assert plan.n > 0 and plan.patch_size_level0 == 1024
    with pytest.raises(ValueError, match="above the slide's base magnification"):
        plan_patches(tcga, tissue, mpp=1.0)  # 10x base cannot give 20x children
