"""CLAM feature folders: labels CSV, CLAM split CSVs, made splits, .pt fallback, pairing, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from wsigym.data.clam import CLAMDataset
from wsigym.data.formats import open_dataset
from wsigym.errors import DataError


def _clam(tmp_path, layouts, bags, hr=False):
    root = layouts.write_clam(tmp_path / "clam", bags)
    csv = layouts.write_labels(tmp_path / "labels.csv", bags)
    hr_root = layouts.write_clam(tmp_path / "clam20x", bags, hr=True) if hr else None
    return root, csv, hr_root


def _splits_csv(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [",train,val,test"] + [f"{i},{','.join(r)}" for i, r in enumerate(rows)]
    (folder / "splits_0.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_lr_only_with_made_splits(tmp_path, layouts, bags):
    root, csv, _ = _clam(tmp_path, layouts, bags)
    ds = CLAMDataset(root, csv, patch_size_level0=layouts.P)
    assert ds.class_names == ("normal", "tumour") and ds.num_folds == 5
    assert ds.slide_ids() == [b.slide_id for b in bags]
    assert ds.splits == CLAMDataset(root, csv, patch_size_level0=layouts.P).splits  # deterministic
    bag = ds.load("slide_03")
    np.testing.assert_array_equal(bag.features, bags[3].features)
    np.testing.assert_array_equal(bag.coords, bags[3].coords)
    assert bag.hr_features is None and bag.label == 1 and bag.meta.patch_size_level0 == layouts.P


def test_clam_split_csv_ragged(tmp_path, layouts, bags):
    root, csv, _ = _clam(tmp_path, layouts, bags)
    rows = [["slide_00", "slide_01", "slide_02"], ["slide_03", "", "slide_04"], ["slide_05", "", ""]]
    splits = _splits_csv(tmp_path / "splits", rows)
    ds = CLAMDataset(root, csv, splits_dir=splits)
    assert ds.num_folds == 1
    assert ds.split("train") == ["slide_00", "slide_03", "slide_05"]
    assert ds.split("val") == ["slide_01"] and ds.split("test") == ["slide_02", "slide_04"]


def test_pairing_recovers_children(tmp_path, layouts, bags):
    root, csv, hr_root = _clam(tmp_path, layouts, bags, hr=True)
    ds = CLAMDataset(root, csv, patch_size_level0=layouts.P, hr_root=hr_root, hr_patch_size_level0=layouts.C)
    for want in bags:
        got = ds.load(want.slide_id)
        assert got.k == layouts.K
        np.testing.assert_array_equal(got.hr_mask, want.hr_mask)
        np.testing.assert_array_equal(got.hr_coords, want.hr_coords)
        np.testing.assert_array_equal(got.hr_features, want.hr_features)
    assert ds.load("slide_01", hr=False).hr_features is None


def test_pt_fallback_and_open_folder(tmp_path, layouts, bags):
    root, csv, _ = _clam(tmp_path, layouts, bags)
    (root / "pt_files").mkdir()
    torch.save(torch.from_numpy(bags[1].features), root / "pt_files" / "slide_01.pt")
    (root / "h5_files" / "slide_01.h5").unlink()
    ds = open_dataset(root, labels_csv=csv, patch_size_level0=layouts.P)
    assert isinstance(ds, CLAMDataset)
    bag = ds.load("slide_01")
    np.testing.assert_array_equal(bag.features, bags[1].features)
    assert bag.meta.extra["coords"] == "synthetic"


# --- bad input
def _h5_edit(rel, fn):
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
    a[2, 0] = np.inf
    return a


def _shift_first(a):
    a = a.copy()
    a[0] += 50_000
    return a


def _same_slot(a):
    a = a.copy()
    a[1] = a[0]
    return a


def _straddles(a):
    a = a.copy()
    a[0] = [1000 + 200, 2000]  # x range [1200, 1328) crosses the border of patches 0 and 1 at x = 1256
    return a


def _rename(src, dst):
    def edit(h):
        h.move(src, dst)

    return edit


def _unknown_class(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text(p.read_text().replace("slide_02,normal", "slide_02,lymphoma"))


def _split_missing(tmp_path):
    _splits_csv(tmp_path / "splits", [["slide_00", "slide_01", "slide_99"]])


def _missing(rel):
    return lambda tmp_path: (tmp_path / rel).unlink()


LR, HR = "clam/h5_files/slide_02.h5", "clam20x/h5_files/slide_02.h5"
BAD = {
    "missing lr file": (_missing(LR), "slide_02.h5", "no feature file"),
    "missing hr file": (_missing(HR), "clam20x", "file not found"),
    "wrong key": (_h5_edit(LR, _rename("features", "feats")), LR, "'features' is missing"),
    "wrong shape": (_h5_edit(LR, _replace("coords", lambda a: np.c_[a, a[:, :1]])), LR, "'coords' has shape"),
    "wrong dtype": (
        _h5_edit(LR, _replace("features", lambda a: (a * 10).astype(np.int16))),
        LR,
        "dtype int16",
    ),
    "wrong hr width": (_h5_edit(HR, _replace("features", lambda a: a[:, :3])), HR, "'features' has shape"),
    "nan rows": (_h5_edit(LR, _replace("features", _nan)), LR, "NaN/inf in 1 rows"),
    "hr nan rows": (_h5_edit(HR, _replace("features", _nan)), HR, "NaN/inf"),
    "child fits no parent": (
        _h5_edit(HR, _replace("coords", _shift_first)),
        HR,
        "fit inside no low-res patch",
    ),
    "child overflows parent": (
        _h5_edit(HR, _replace("coords", _straddles)),
        HR,
        "fit inside no low-res patch",
    ),
    "two children one slot": (_h5_edit(HR, _replace("coords", _same_slot)), HR, "two high-res patches"),
    "label not in classes": (_unknown_class, "labels.csv", "'lymphoma'"),
    "split names missing slide": (_split_missing, "splits_0.csv", "'slide_99'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_data_error(tmp_path, layouts, bags, case):
    corrupt, where, what = BAD[case]
    root, csv, hr_root = _clam(tmp_path, layouts, bags, hr=True)
    corrupt(tmp_path)
    splits = tmp_path / "splits" if (tmp_path / "splits").exists() else None
    with pytest.raises(DataError) as err:
        ds = CLAMDataset(
            root,
            csv,
            splits_dir=splits,
            class_names=("normal", "tumour"),
            patch_size_level0=layouts.P,
            hr_root=hr_root,
            hr_patch_size_level0=layouts.C,
        )
        ds.load("slide_02")
    assert where in str(err.value) and what in str(err.value), str(err.value)


def test_zoo_train_cli_reads_clam_with_reader_options(tmp_path, layouts, bags, capsys):
    """``zoo train --format clam --reader hr_root=...``: the documented CAMELYON16 command shape."""
    from zoo import hub
    from zoo.cli import main as zoo_main

    root, csv, hr_root = _clam(tmp_path, layouts, bags, hr=True)
    out = tmp_path / "run"
    argv = ["train", "abmil", "--dataset", str(root), "--format", "clam", "--labels", str(csv)]
    argv += [
        "--reader",
        f"hr_root={hr_root}",
        f"patch_size_level0={layouts.P}",
        f"hr_patch_size_level0={layouts.C}",
    ]
    argv += ["--config", "view=hr", "hidden=8", "attn_dim=8", "--epochs", "1", "--out", str(out)]
    assert zoo_main(argv) == 0
    model = hub.load(str(out))
    assert model.input_view == "hr" and model.config.in_dim == bags[0].dim
    assert zoo_main([*argv[:9], "--reader", "hr_root"]) == 2
    assert "--reader expects key=value, got 'hr_root'" in capsys.readouterr().err
