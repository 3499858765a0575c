"""TRIDENT job folders: 5x bags with 20x children paired by coordinates; pairing rules; bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from wsigym.data.formats import open_dataset
from wsigym.data.pairing import pair_children
from wsigym.data.trident import TridentDataset
from wsigym.errors import DataError


def _job(tmp_path, layouts, bags, **kw):
    job = layouts.write_trident(tmp_path / "job", bags, **kw)
    csv = layouts.write_labels(tmp_path / "labels.csv", bags, id_column="wsi", suffix=".svs")
    return job, csv


def test_pairs_children_and_reads_geometry(tmp_path, layouts, bags):
    job, csv = _job(tmp_path, layouts, bags)
    ds = TridentDataset(job, csv)
    assert ds.slide_ids() == [b.slide_id for b in bags]  # 'wsi' column, extension dropped
    for want in bags:
        got = ds.load(want.slide_id)
        np.testing.assert_array_equal(got.features, want.features)
        np.testing.assert_array_equal(got.hr_mask, want.hr_mask)
        np.testing.assert_array_equal(got.hr_coords, want.hr_coords)
        np.testing.assert_array_equal(got.hr_features, want.hr_features)
    meta = ds.load("slide_00").meta
    assert (meta.patch_size_level0, meta.hr_patch_size_level0) == (layouts.P, layouts.C)
    assert (meta.lr_magnification, meta.hr_magnification, meta.encoder) == (5.0, 20.0, "uni_v1")
    lr_only = TridentDataset(job, csv, hr_mag=None).load("slide_00")
    assert lr_only.hr_features is None and ds.load("slide_00", hr=False).hr_features is None


def test_tissue_mask_and_mpp_from_wsigym_extractor(tmp_path, layouts, bags):
    """wsigym.slides.extract lists all k children of each parent with a ``tissue_mask`` flag."""
    job, csv = _job(tmp_path, layouts, bags)
    want = bags[2]
    n, k = want.hr_mask.shape
    noise = np.random.default_rng(0).standard_normal(want.hr_features.shape).astype(np.float32)
    all_children = np.where(want.hr_mask[..., None], want.hr_features, noise)
    with h5py.File(layouts.trident_level(job, 20, 256) / "slide_02.h5", "r+") as f:
        attrs = dict(f["coords"].attrs)
        for key in ("features", "coords"):
            del f[key]
        f["features"] = all_children.reshape(n * k, -1)
        f["coords"] = want.hr_coords.reshape(n * k, 2)
        f["coords"].attrs.update(attrs)
        f["tissue_mask"] = want.hr_mask.reshape(n * k)
        f.attrs["mpp"] = 0.25
    got = TridentDataset(job, csv).load("slide_02")
    np.testing.assert_array_equal(got.hr_mask, want.hr_mask)
    np.testing.assert_array_equal(got.hr_features, want.hr_features)
    assert got.meta.mpp is None  # the low-res file has no mpp attribute
    with h5py.File(layouts.trident_level(job, 5, 256) / "slide_02.h5", "r+") as f:
        f.attrs["mpp"] = 0.25
    assert TridentDataset(job, csv).load("slide_02").meta.mpp == 0.25


def test_encoder_choice_and_open_folder(tmp_path, layouts, bags):
    job, csv = _job(tmp_path, layouts, bags)
    layouts.write_trident(job, bags, encoder="conch_v15")
    with pytest.raises(DataError, match="2 folders match 5x_"):
        TridentDataset(job, csv)
    assert TridentDataset(job, csv, encoder="conch_v15").lr.encoder == "conch_v15"
    ds = open_dataset(job / "5x_256px_0px_overlap", labels=csv, encoder="uni_v1")
    assert isinstance(ds, TridentDataset) and ds.hr is not None


def test_pairing_rules():
    coords = np.array([[0, 0], [256, 0], [0, 1024]])
    feats = np.arange(4 * 2, dtype=np.float32).reshape(4, 2)
    # child 0 off the slot grid but inside parent 0 (slot floor((64, 32) / 128) = (0, 0));
    # child 1 in slot (row 1, col 1) of parent 1; child 2 in slot 1 of parent 0; parent 2 gets nothing
    child = np.array([[64, 32], [384, 128], [128, 0], [256, 0]])
    p = pair_children(coords, feats, child, 256, 128, "x.h5")
    assert p.n_dropped == 1 and p.keep.tolist() == [True, True, False]
    assert p.hr_mask.tolist() == [[True, True, False, False], [True, False, False, True]]
    np.testing.assert_array_equal(p.hr_coords[0, :2], [[64, 32], [128, 0]])
    np.testing.assert_array_equal(p.hr_coords[0, 2:], [[0, 128], [128, 128]])  # nominal slot corners
    np.testing.assert_array_equal(p.hr_features[1, 3], feats[1])
    with pytest.raises(DataError, match=r"x\.h5: 1 low-res patches have no high-res child"):
        pair_children(coords, feats, child, 256, 128, "x.h5", childless="error")
    with pytest.raises(DataError, match="must divide"):
        pair_children(coords, feats, child, 256, 100, "x.h5")


def test_not_a_job_folder(tmp_path, layouts):
    (tmp_path / "features_uni").mkdir()
    with pytest.raises(DataError, match="not a TRIDENT job folder"):
        TridentDataset(tmp_path, layouts.write_labels(tmp_path / "l.csv", layouts.make_bags(2)))


# --- bad input
LR = "job/5x_256px_0px_overlap/features_uni_v1/slide_02.h5"
HR = "job/20x_256px_0px_overlap/features_uni_v1/slide_02.h5"


def _edit(rel, fn):
    def f(tmp_path):
        with h5py.File(tmp_path / rel, "r+") as h:
            fn(h)

    return f


def _replace(key, fn):
    def edit(h):
        attrs = dict(h[key].attrs)
        data = fn(h[key][()])
        del h[key]
        h[key] = data
        h[key].attrs.update(attrs)

    return edit


def _nan(a):
    a = a.astype(np.float32)
    a[0, 3] = np.nan
    return a


def _shift(a):
    a = a.copy()
    a[3] -= 100_000
    return a


def _del_attr(h):
    del h["coords"].attrs["patch_size_level0"]


def _bad_ps(h):
    h["coords"].attrs["patch_size_level0"] = 100


def _unknown_class(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text(p.read_text().replace("slide_02.svs,normal", "slide_02.svs,adenoma"))


def _split_missing(tmp_path):
    (tmp_path / "splits").mkdir()
    split = {"train": ["slide_00", "slide_01"], "val": ["slide_02"], "test": ["slide_404"]}
    (tmp_path / "splits" / "split_0.json").write_text(json.dumps(split))


def _rm(rel):
    return lambda tmp_path: (tmp_path / rel).unlink()


BAD = {
    "missing lr file": (_rm(LR), LR, "no feature file"),
    "missing hr file": (_rm(HR), HR, "no feature file"),
    "wrong key": (_edit(LR, lambda h: h.move("coords", "coordinates")), LR, "'coords' is missing"),
    "missing attr": (_edit(HR, _del_attr), HR, "'patch_size_level0'"),
    "wrong shape": (_edit(LR, _replace("features", lambda a: a[:, :, None])), LR, "'features' has shape"),
    "wrong dtype": (
        _edit(HR, _replace("coords", lambda a: a.astype(str).astype(bytes))),
        HR,
        "'coords' has dtype",
    ),
    "float coords": (_edit(LR, _replace("coords", lambda a: a + 0.5)), LR, "'coords' has dtype float64"),
    "nan rows": (_edit(LR, _replace("features", _nan)), LR, "NaN/inf in 1 rows"),
    "child fits no parent": (_edit(HR, _replace("coords", _shift)), HR, "fit inside no low-res patch"),
    "sizes do not divide": (_edit(HR, _bad_ps), HR, "must divide"),
    "label not in classes": (_unknown_class, "labels.csv", "'adenoma'"),
    "split names missing slide": (_split_missing, "split_0.json", "'slide_404'"),
    "no 5x folder": (
        lambda t: (t / "job" / "5x_256px_0px_overlap").rename(t / "job" / "low"),
        "job",
        "no folder match 5x_",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_data_error(tmp_path, layouts, bags, case):
    corrupt, where, what = BAD[case]
    job, csv = _job(tmp_path, layouts, bags)
    corrupt(tmp_path)
    splits = tmp_path / "splits" if (tmp_path / "splits").exists() else None
    with pytest.raises(DataError) as err:
        TridentDataset(job, csv, splits_dir=splits, class_names=("normal", "tumour")).load("slide_02")
    assert where in str(err.value) and what in str(err.value), str(err.value)
