"""SASHA grouped feature files: groups per slide, inferred geometry, SASHA split JSONs, bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from wsigym.data.formats import open_dataset
from wsigym.data.sasha import SashaDataset
from wsigym.errors import DataError


def test_reads_groups_with_sasha_splits(tmp_path, layouts, bags):
    root = layouts.write_sasha(tmp_path / "sasha", bags)
    layouts.write_sasha_splits(root / "splits", bags, n=2)
    ds = open_dataset(root)
    assert isinstance(ds, SashaDataset) and ds.num_folds == 2
    assert ds.split("test", 1) == ["slide_00"] and ds.split("val") == ["slide_01"]
    for want in bags:
        got = ds.load(want.slide_id)
        assert got.label == want.label and got.k == layouts.K and got.hr_mask.all()
        np.testing.assert_allclose(got.features, want.features, atol=4e-3)
        np.testing.assert_allclose(got.hr_features, want.hr_features, atol=4e-3)
        np.testing.assert_array_equal(got.hr_coords, want.hr_coords)
    meta = ds.load("slide_00").meta
    assert (meta.patch_size_level0, meta.hr_patch_size_level0, meta.encoder) == (
        layouts.P,
        layouts.C,
        "medical_ssl",
    )
    assert ds.load("slide_02", hr=False).hr_features is None


def test_made_splits_without_split_files(tmp_path, layouts, bags):
    ds = SashaDataset(layouts.write_sasha(tmp_path / "s", bags, pretrain="uni"), pretrain="uni")
    assert ds.num_folds == 5 and sorted(s for v in ds.splits[0].values() for s in v) == ds.slide_ids()


# --- bad input
LRF = "sasha/lr/h5_files/patch_feats_pretrain_medical_ssl.h5"
HRF = "sasha/hr/h5_files/patch_feats_pretrain_medical_ssl.h5"


def _edit(rel, fn):
    def f(tmp_path):
        with h5py.File(tmp_path / rel, "r+") as h:
            fn(h)

    return f


def _replace(key, fn):
    def edit(h):
        data = fn(h[key][()])
        del h[key]
        h[key] = data

    return edit


def _nan(a):
    a = a.copy()
    a[1, 0] = np.nan
    return a


def _hr_nan(a):
    a = a.copy()
    a[1, 2, 0] = np.nan
    return a


def _child_out(a):
    a = a.copy()
    a[0, 3] += 4096
    return a


def _split_missing(tmp_path):
    (tmp_path / "splits").mkdir(exist_ok=True)
    s = {"train_names": ["slide_00"], "val_names": ["slide_01"], "test_names": ["normal_027"]}
    (tmp_path / "splits" / "split_1.json").write_text(json.dumps(s))


def _split_wrong_keys(tmp_path):
    (tmp_path / "splits").mkdir(exist_ok=True)
    (tmp_path / "splits" / "split_1.json").write_text(json.dumps({"train": ["slide_00"]}))


def _set_label(value):
    def edit(h):
        h["slide_02"].attrs["label"] = value

    return edit


G = "group 'slide_02'"
BAD = {
    "missing lr file": (lambda t: (t / LRF).unlink(), LRF, "file not found"),
    "missing hr file": (lambda t: (t / HRF).unlink(), HRF, "file not found"),
    "missing hr group": (_edit(HRF, lambda h: h.__delitem__("slide_04")), HRF, "'slide_04'"),
    "missing key": (
        _edit(LRF, lambda h: h.move("slide_02/feat", "slide_02/features")),
        G,
        "'feat' is missing",
    ),
    "missing label": (
        _edit(LRF, lambda h: h["slide_02"].attrs.__delitem__("label")),
        G,
        "'label' is missing",
    ),
    "wrong shape": (_edit(HRF, _replace("slide_02/feat", lambda a: a[:, :, :5])), G, "'feat' has shape"),
    "wrong dtype": (_edit(LRF, _replace("slide_02/feat", lambda a: a.astype(np.int8))), G, "dtype int8"),
    "nan rows": (_edit(LRF, _replace("slide_02/feat", _nan)), G, "NaN/inf in 1 rows"),
    "hr nan": (_edit(HRF, _replace("slide_02/feat", _hr_nan)), HRF, "NaN/inf in 1 valid children"),
    "children outside parent": (
        _edit(HRF, _replace("slide_02/coords", _child_out)),
        HRF,
        "do not fit inside",
    ),
    "label not in classes": (_edit(LRF, _set_label(7)), G, "label' = 7"),
    "label name unknown": (_edit(LRF, _set_label("lymphoma")), G, "'lymphoma'"),
    "hr label differs": (_edit(HRF, _set_label(1)), HRF, "differs"),
    "split names missing slide": (_split_missing, "split_1.json", "'normal_027'"),
    "split wrong keys": (_split_wrong_keys, "split_1.json", "'train_names' (a list of slide ids) is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_data_error(tmp_path, layouts, bags, case):
    corrupt, where, what = BAD[case]
    root = layouts.write_sasha(tmp_path / "sasha", bags)
    corrupt(tmp_path)
    splits = tmp_path / "splits" if (tmp_path / "splits").exists() else None
    with pytest.raises(DataError) as err:
        SashaDataset(root, splits_dir=splits).load("slide_02")
    assert where in str(err.value) and what in str(err.value), str(err.value)
