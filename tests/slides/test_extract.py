from __future__ import annotations

import h5py
import numpy as np
import pytest

from wsigym.errors import DataError
from wsigym.slides.extract import extract_features, extract_folder, output_paths, read_slide_bag
from wsigym.slides.synthetic_slides import tumour_fraction

TRIDENT_ATTRS = {
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "name",
    "savetodir",
    "level0_width",
    "level0_height",
}


@pytest.fixture(scope="module")
def synthetic_job(tmp_path_factory, synthetic, tiny_encoder):
    job = tmp_path_factory.mktemp("job")
    paths = extract_features(synthetic.path, job, tiny_encoder, batch_size=24, progress=False)
    return job, paths


def test_trident_layout_and_attrs(synthetic_job, synthetic, tiny_encoder):
    job, paths = synthetic_job
    name = synthetic.path.stem
    assert paths["lr_features"] == job / "5x_256px_0px_overlap" / "features_vit_tiny_rand32" / f"{name}.h5"
    assert paths["hr_patches"] == job / "20x_256px_0px_overlap" / "patches" / f"{name}_patches.h5"
    with h5py.File(paths["lr_features"], "r") as f:
        z, coords = f["features"][:], f["coords"][:]
        a = dict(f["coords"].attrs)
        assert f["features"].attrs["encoder"] == tiny_encoder.name
    assert z.dtype == np.float32 and z.shape == (coords.shape[0], 192) and coords.dtype == np.int64
    assert set(a) >= TRIDENT_ATTRS
    assert a["patch_size"] == 256 and a["patch_size_level0"] == 2048
    assert a["level0_magnification"] == 40 and a["target_magnification"] == 5 and a["overlap"] == 0
    assert (coords % 2048 == 0).all()
    with h5py.File(paths["hr_features"], "r") as f:
        u, hr = f["features"][:], f["coords"][:]
        ha = dict(f["coords"].attrs)
        mask, parent = f["tissue_mask"][:], f["parent_index"][:]
    n = coords.shape[0]
    assert u.shape == (n * 16, 192) and hr.shape == (n * 16, 2)
    assert ha["patch_size_level0"] == 512 and ha["target_magnification"] == 20
    assert np.array_equal(parent, np.repeat(np.arange(n), 16))
    # only children of kept low-res patches, inside their parent
    rel = hr.reshape(n, 16, 2) - coords[:, None, :]
    assert (rel >= 0).all() and (rel + 512 <= 2048).all()
    assert mask.dtype == np.bool_ and mask.reshape(n, 16).any(axis=1).all()
    with h5py.File(paths["lr_patches"], "r") as f:
        assert np.array_equal(f["coords"][:], coords) and "features" not in f
    assert not list(job.rglob("*.tmp"))


def test_round_trip_to_slide_bag_and_tumour_signal(synthetic_job, synthetic, tiny_encoder):
    job, _ = synthetic_job
    bag = read_slide_bag(job, synthetic.path.stem, tiny_encoder.name, label=1)
    assert bag.k == 16 and bag.dim == 192 and bag.meta.patch_size_level0 == 2048
    assert bag.meta.hr_patch_size_level0 == 512 and bag.meta.mpp == pytest.approx(0.25)
    # features differ between tumour and non-tumour children (a random encoder still sees colour)
    tf = tumour_fraction(synthetic.tumour_regions, bag.hr_coords, 512, synthetic.width, synthetic.height)
    tum, normal = bag.hr_features[(tf > 0.9) & bag.hr_mask], bag.hr_features[(tf == 0) & bag.hr_mask]
    assert len(tum) >= 4 and len(normal) >= 4
    within = np.linalg.norm(tum - tum.mean(0), axis=1).mean()
    between = np.linalg.norm(tum.mean(0) - normal.mean(0))
    assert between > within


def test_resume_skips_complete_and_overwrite_recomputes(synthetic_job, synthetic, tiny_encoder):
    job, paths = synthetic_job
    before = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    again = extract_features(synthetic.path, job, tiny_encoder, progress=False)
    assert again == paths and {k: p.stat().st_mtime_ns for k, p in paths.items()} == before
    # a lost high-res feature file is recomputed from the stored patches only
    paths["hr_features"].unlink()
    extract_features(synthetic.path, job, tiny_encoder, progress=False)
    assert paths["hr_features"].is_file()
    assert paths["lr_features"].stat().st_mtime_ns == before["lr_features"]
    assert paths["lr_patches"].stat().st_mtime_ns == before["lr_patches"]


def test_real_slides_whole_pipeline(tmp_path, cmu, tcga, tiny_encoder):
    with pytest.raises(DataError, match=r"tcga-cr-7395-01a-01-ts1\.svs: .*pass mpp="):
        extract_features(tcga, tmp_path, tiny_encoder, progress=False)
    done, failed = extract_folder(
        [cmu, tcga], tmp_path, tiny_encoder, mpp={tcga.stem: 0.5}, progress=False, batch_size=32
    )
    assert not failed and set(done) == {cmu.stem, tcga.stem}
    b1 = read_slide_bag(tmp_path, cmu.stem, tiny_encoder.name)
    assert b1.meta.mpp == pytest.approx(0.499) and b1.meta.patch_size_level0 == 1024 and b1.n >= 1
    b2 = read_slide_bag(tmp_path, tcga.stem, tiny_encoder.name)
    assert b2.meta.mpp == 0.5 and b2.n >= 5 and b2.k == 16
    # skip mode records the bad slide and goes on
    bad = tmp_path / "bad.svs"
    bad.write_text("nope")
    done, failed = extract_folder([bad, cmu], tmp_path, tiny_encoder, on_error="skip", progress=False)
    assert set(done) == {cmu.stem} and "not a readable slide" in failed["bad"]
    assert output_paths(tmp_path, "bad", tiny_encoder.name, 5, 20, 256)["lr_features"].exists() is False


def test_trident_dataset_reads_the_output_back(synthetic_job, synthetic, tiny_encoder, tmp_path):
    from wsigym.data.trident import TridentDataset

    job, _ = synthetic_job
    csv = tmp_path / "labels.csv"
    csv.write_text(f"slide_id,label\n{synthetic.path.stem},tumor\n")
    ds = TridentDataset(
        job, csv, encoder=tiny_encoder.name, lr_mag=5, hr_mag=20, class_names=("normal", "tumor")
    )
    bag = ds.load(synthetic.path.stem)
    ours = read_slide_bag(job, synthetic.path.stem, tiny_encoder.name)
    assert bag.label == 1 and bag.k == 16
    assert np.array_equal(bag.coords, ours.coords)
    assert np.array_equal(bag.hr_mask, ours.hr_mask)
    assert np.allclose(bag.hr_features[bag.hr_mask], ours.hr_features[ours.hr_mask])
    assert np.allclose(bag.features, ours.features)
    assert bag.meta.patch_size_level0 == 2048 and bag.meta.hr_patch_size_level0 == 512
