"""Native format: round trip, atomic writes, dataset index, and one DataError per kind of bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from wsigym.data.formats import open_dataset
from wsigym.data.native import NativeDataset, read_bag, slide_path, write_bag, write_dataset_index
from wsigym.data.splits import make_splits
from wsigym.errors import DataError


def _write_native(root, bags, dtype="float16"):
    for b in bags:
        write_bag(b, slide_path(root, b.slide_id), dtype=dtype)
    labels = {b.slide_id: b.label for b in bags}
    return write_dataset_index(root, "tiny", ("normal", "tumour"), labels, make_splits(labels, n_folds=2))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path, bags, dtype):
    bag = bags[3]
    path = write_bag(bag, tmp_path / "s.h5", dtype=dtype)
    with h5py.File(path) as f:
        assert f["lr/features"].dtype == np.dtype(dtype)
        assert f.attrs["format"] == "wsigym-bag" and f.attrs["format_version"] == 1
        assert json.loads(f.attrs["class_names"]) == ["normal", "tumour"]
    back = read_bag(path)
    tol = 1e-3 if dtype == "float16" else 0
    assert back.features.dtype == np.float32
    np.testing.assert_allclose(back.features, bag.features, atol=tol * 4)
    np.testing.assert_array_equal(back.coords, bag.coords)
    np.testing.assert_array_equal(back.hr_mask, bag.hr_mask)
    np.testing.assert_array_equal(back.hr_coords, bag.hr_coords)
    np.testing.assert_allclose(back.hr_features, bag.hr_features, atol=tol * 4)
    np.testing.assert_allclose(back.tumour_fraction, bag.tumour_fraction, atol=1e-6)
    np.testing.assert_allclose(back.hr_tumour_fraction, bag.hr_tumour_fraction, atol=1e-6)
    np.testing.assert_allclose(back.views["vlm"], bag.views["vlm"], atol=tol * 4)
    assert back.meta == bag.meta and back.label == bag.label and back.slide_id == bag.slide_id
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]  # no temp file left


def test_read_without_hr(tmp_path, bags):
    back = read_bag(write_bag(bags[0], tmp_path / "s.h5"), hr=False)
    assert back.hr_features is None and back.hr_mask is None and back.hr_tumour_fraction is None
    assert back.tumour_fraction is not None


def test_float16_overflow_is_refused_and_nothing_written(tmp_path, bags):
    bag = bags[0]
    bag.features[0, 0] = 1e6
    with pytest.raises(DataError, match="float32"):
        write_bag(bag, tmp_path / "s.h5")
    assert list(tmp_path.iterdir()) == []
    write_bag(bag, tmp_path / "s.h5", dtype="float32")


def test_dataset_index_and_open(tmp_path, bags):
    root = _write_native(tmp_path / "ds", bags)
    ds = open_dataset(root)
    assert isinstance(ds, NativeDataset)
    assert ds.name == "tiny" and ds.class_names == ("normal", "tumour") and ds.num_folds == 2
    assert ds.slide_ids() == sorted(b.slide_id for b in bags)
    assert sorted(s for ids in ds.splits[0].values() for s in ids) == ds.slide_ids()
    assert json.loads((root / "dataset.json").read_text())["format"] == "wsigym"
    assert (root / "labels.csv").read_text().splitlines()[1] == "slide_00,normal"
    bag = ds.load("slide_05")
    assert bag.label == 1 and bag.k == 4
    assert [b.slide_id for b in ds.bags("test", 1, hr=False)] == ds.split("test", 1)


def test_make_splits_is_deterministic_and_stratified():
    labels = {f"s{i:02d}": int(i < 12) for i in range(30)}
    a, b = make_splits(labels, 3, 0.1, 0.2, seed=7), make_splits(labels, 3, 0.1, 0.2, seed=7)
    assert a == b and a != make_splits(labels, 3, 0.1, 0.2, seed=8)
    for split in a:
        assert sorted(split["train"] + split["val"] + split["test"]) == sorted(labels)
        assert sum(labels[s] for s in split["test"]) == round(0.2 * 12)
        assert len(split["test"]) == round(0.2 * 12) + round(0.2 * 18)


# --- bad input: each case corrupts a valid dataset; the error must name the file (and key).
def _h5(root, sid="slide_02"):
    return h5py.File(slide_path(root, sid), "r+")


def _del(key):
    def f(root):
        with _h5(root) as h:
            del h[key]

    return f


def _replace(key, fn):
    def f(root):
        with _h5(root) as h:
            data = fn(h[key][()])
            del h[key]
            h[key] = data

    return f


def _nan_row(a):
    a = a.astype(np.float32)
    a[1] = np.nan
    return a


def _children_outside(a):
    a = a.copy()
    a[0, 1] += 10_000
    return a


def _labels_unknown_class(root):
    p = root / "labels.csv"
    p.write_text(p.read_text().replace("slide_03,tumour", "slide_03,lymphoma"))


def _split_missing_slide(root):
    p = root / "splits" / "split_0.json"
    s = json.loads(p.read_text())
    s["test"].append("slide_99")
    p.write_text(json.dumps(s))


def _missing_slide_file(root):
    slide_path(root, "slide_02").unlink()


def _bad_label_attr(root):
    with _h5(root) as h:
        h.attrs["label"] = 5


def _bad_format(root):
    with _h5(root) as h:
        h.attrs["format"] = "something"


def _not_hdf5(root):
    slide_path(root, "slide_02").write_bytes(b"not an hdf5 file")


BAD = {
    "missing file": (_missing_slide_file, "slide_02.h5", "missing"),
    "not hdf5": (_not_hdf5, "slide_02.h5", "HDF5"),
    "missing key": (_del("lr/coords"), "slide_02.h5", "'lr/coords' is missing"),
    "missing hr mask": (_del("hr/mask"), "slide_02.h5", "'hr/mask' is missing"),
    "wrong shape": (_replace("lr/coords", lambda a: a[:, :1]), "slide_02.h5", "'lr/coords' has shape"),
    "wrong hr shape": (_replace("hr/coords", lambda a: a[:, :2]), "slide_02.h5", "'hr/coords' has shape"),
    "wrong dtype": (_replace("lr/features", lambda a: a.astype(np.int32)), "slide_02.h5", "dtype int32"),
    "wrong mask dtype": (_replace("hr/mask", lambda a: a.astype(np.uint8)), "slide_02.h5", "expected bool"),
    "nan rows": (_replace("lr/features", _nan_row), "slide_02.h5", "NaN/inf in 1 rows"),
    "children outside parent": (_replace("hr/coords", _children_outside), "slide_02.h5", "do not fit inside"),
    "label not in classes (file)": (_bad_label_attr, "slide_02.h5", "label 5"),
    "label not in classes (csv)": (_labels_unknown_class, "labels.csv", "'lymphoma'"),
    "split names missing slide": (_split_missing_slide, "split_0.json", "'slide_99'"),
    "wrong format attr": (_bad_format, "slide_02.h5", "'format'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_data_error(tmp_path, bags, case):
    corrupt, where, what = BAD[case]
    root = _write_native(tmp_path / "ds", bags)
    corrupt(root)
    with pytest.raises(DataError) as err:
        NativeDataset(root).load("slide_02")
    assert where in str(err.value) and what in str(err.value), str(err.value)


def test_masked_children_keep_values_and_nonfinite_become_zero(tmp_path, bags):
    bag = bags[4]
    i, j = np.argwhere(~bag.hr_mask)[:2]
    bag.hr_features[i[0], i[1]] = 3.0
    bag.hr_features[j[0], j[1], 0] = np.nan
    back = read_bag(write_bag(bag, tmp_path / "s.h5", dtype="float32"))
    assert (back.hr_features[i[0], i[1]] == 3.0).all()
    assert back.hr_features[j[0], j[1], 0] == 0 and np.isfinite(back.hr_features).all()
