from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsigym.errors import DataError
from wsigym.slides.magnification import (
    children_per_side,
    level_for_downsample,
    magnification_from_mpp,
    patch_size_level0,
)
from wsigym.slides.reader import SlideReader, open_slide, read_children, read_patch


def test_magnification_maths():
    assert magnification_from_mpp(0.25) == 40
    assert magnification_from_mpp(0.499) == 20
    assert magnification_from_mpp(0.2527) == 40
    assert magnification_from_mpp(0.7, snap=False) == pytest.approx(10 / 0.7)
    assert magnification_from_mpp(0.7) == pytest.approx(10 / 0.7)  # 14.3x is no standard objective
    with pytest.raises(ValueError, match="mpp"):
        magnification_from_mpp(0)
    assert patch_size_level0(256, 40, 5) == 2048
    assert patch_size_level0(256, 20, 5) == 1024
    assert children_per_side(5, 20) == 4
    assert children_per_side(10, 20) == 2
    with pytest.raises(ValueError, match="whole number"):
        children_per_side(5, 12)
    ds = (1.0, 4.0, 16.0)
    assert level_for_downsample(ds, 8.0) == 1  # closest below, then resample
    assert level_for_downsample(ds, 2.0) == 0
    assert level_for_downsample(ds, 16.0) == 2
    assert level_for_downsample(ds, 100.0) == 2


def test_cmu_metadata_and_reads(cmu):
    s = open_slide(cmu)
    assert s.backend == "openslide" and s.vendor == "aperio"
    assert s.dimensions == (2220, 2967) and s.level_count == 1
    assert s.mpp == pytest.approx(0.499) and s.objective_power == 20
    assert s.base_magnification == 20
    p = read_patch(s, (1024, 1024), 5, 256)  # resampling path: no 5x level
    assert p.shape == (256, 256, 3) and p.dtype == np.uint8
    assert 50 < p.mean() < 250
    kids = read_children(s, (1024, 1024), 5, 20, 256)
    assert kids.shape == (16, 256, 256, 3)
    # child 5 (row 1, col 1) at 20x is the level-0 region itself (base is 20x)
    direct = s.read_region((1024 + 256, 1024 + 256), 0, (256, 256))
    assert np.abs(kids[5].astype(int) - direct.astype(int)).mean() < 2
    # the 5x patch is the children mosaic shrunk 4x
    mosaic = kids.reshape(4, 4, 256, 256, 3).transpose(0, 2, 1, 3, 4).reshape(1024, 1024, 3)
    small = np.asarray(Image.fromarray(mosaic).resize((256, 256), Image.Resampling.LANCZOS))
    assert np.abs(small.astype(int) - p.astype(int)).mean() < 3


def test_out_of_range_reads_raise(cmu):
    s = open_slide(cmu)
    with pytest.raises(ValueError, match="level 1 does not exist"):
        s.read_region((0, 0), 1, (10, 10))
    with pytest.raises(ValueError, match="leaves the slide"):
        s.read_region((2100, 0), 0, (256, 256))
    with pytest.raises(ValueError, match="leaves the slide"):
        s.read_region((-1, 0), 0, (10, 10))
    with pytest.raises(ValueError, match="above the slide's base magnification"):
        read_patch(s, (0, 0), 40, 256)


def test_reader_pickles_as_path_and_reopens(cmu):
    s = open_slide(cmu, mpp=0.5)
    a = s.read_region((100, 100), 0, (64, 64))
    t = pickle.loads(pickle.dumps(s))
    assert t._handle is None and t.path == s.path and t.mpp == 0.5
    assert np.array_equal(t.read_region((100, 100), 0, (64, 64)), a)


def test_slide_without_mpp_errors_then_override_works(tcga):
    s = open_slide(tcga)
    assert s.mpp is None and s.objective_power is None
    with pytest.raises(DataError, match=r"tcga-cr-7395.*pass mpp="):
        _ = s.base_magnification
    with pytest.raises(DataError, match="mpp="):
        read_patch(s, (0, 0), 5, 64)
    t = open_slide(tcga, mpp=0.5)
    assert t.base_magnification == 20
    assert read_patch(t, (1024, 1024), 5, 64).shape == (64, 64, 3)
    assert t.info()["base_magnification"] == 20
    assert s.info()["base_magnification"] is None


def test_tiffslide_backend_matches_openslide(cmu):
    a = SlideReader(cmu, backend="openslide").open()
    b = SlideReader(cmu, backend="tiffslide").open()
    assert b.backend == "tiffslide"
    assert b.dimensions == a.dimensions and b.mpp == pytest.approx(a.mpp) and b.base_magnification == 20
    ra, rb = a.read_region((500, 700), 0, (128, 128)), b.read_region((500, 700), 0, (128, 128))
    assert np.abs(ra.astype(int) - rb.astype(int)).mean() < 3


def test_synthetic_aperio_is_read_as_aperio(synthetic):
    s = open_slide(synthetic.path)
    assert s.backend == "openslide" and s.vendor == "aperio"
    assert s.level_dimensions == ((8192, 8192), (2048, 2048), (512, 512))
    assert s.mpp == pytest.approx(0.25) and s.objective_power == 40 and s.base_magnification == 40
    x0, y0, x1, y1 = synthetic.tumour_regions[0]
    centre = read_patch(s, ((x0 + x1) // 2 - 256, (y0 + y1) // 2 - 256), 20, 256)
    bg = read_patch(s, (0, 0), 20, 256)
    assert centre.mean() < 160 and bg.mean() > 230  # purple tumour vs white glass


def test_untiled_tiff_goes_to_tiffslide(tmp_path):
    p = tmp_path / "untiled.tif"
    img = np.full((300, 400, 3), 200, np.uint8)
    img[100:200, 100:200] = (120, 40, 160)
    tifffile.imwrite(p, img, photometric="rgb")
    s = open_slide(p)
    assert s.backend == "tiffslide"  # never a silent PIL ImageSlide
    assert s.dimensions == (400, 300)
    assert np.array_equal(s.read_region((100, 100), 0, (10, 10))[0, 0], [120, 40, 160])


def _corrupt(tmp_path: Path, kind: str, cmu: Path, synthetic_path: Path) -> Path:
    if kind == "text":
        p = tmp_path / "notes.svs"
        p.write_text("this is not a slide\n")
    elif kind == "empty":
        p = tmp_path / "empty.svs"
        p.write_bytes(b"")
    elif kind == "png":
        p = tmp_path / "picture.svs"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p, format="PNG")
    elif kind == "truncated_real":
        p = tmp_path / "cmu_half.svs"
        data = cmu.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_synthetic":
        p = tmp_path / "synthetic_half.svs"
        data = synthetic_path.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "garbled":
        p = tmp_path / "garbled.svs"
        data = bytearray(cmu.read_bytes())
        rng = np.random.default_rng(0)
        data[4096:] = rng.integers(0, 256, len(data) - 4096, dtype=np.uint8).tobytes()
        p.write_bytes(bytes(data))
    elif kind == "missing":
        p = tmp_path / "missing.svs"
    else:  # a folder
        p = tmp_path / "folder.svs"
        p.mkdir()
    return p


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "not a readable slide"),
        ("empty", "empty"),
        ("png", "not a readable slide"),
        ("truncated_real", "slide"),
        ("truncated_synthetic", "slide"),
        ("garbled", "slide"),
        ("missing", "no such file"),
        ("folder", "not a file"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, cmu, synthetic, kind, message):
    p = _corrupt(tmp_path, kind, cmu, synthetic.path)
    with pytest.raises(DataError, match=message) as info:
        open_slide(p)
    assert info.value.source == str(p)
