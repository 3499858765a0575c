"""describe(), format_description(), layout detection and the ``wsigym data`` CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from wsigym.cli import main
from wsigym.data.describe import describe, format_description
from wsigym.data.formats import NAMED_DATASETS, detect_layout, open_dataset
from wsigym.data.native import NativeDataset, slide_path, write_bag, write_dataset_index
from wsigym.data.splits import make_splits
from wsigym.errors import DataError


@pytest.fixture
def native(tmp_path, bags):
    root = tmp_path / "native"
    for b in bags:
        write_bag(b, slide_path(root, b.slide_id))
    labels = {b.slide_id: b.label for b in bags}
    write_dataset_index(root, "tiny", ("normal", "tumour"), labels, make_splits(labels, 2, 0.2, 0.2, seed=1))
    return root


def test_describe_counts_and_truth(native, bags):
    d = describe(NativeDataset(native), fold=1)
    ns = [b.n for b in bags]
    assert d["slides"] == 6 and d["class_counts"] == {"normal": 3, "tumour": 3}
    assert d["num_folds"] == 2 and sum(d["split_sizes"].values()) == 6 and d["fold"] == 1
    assert d["patches"] == {"min": 4, "median": float(np.median(ns)), "mean": float(np.mean(ns)), "max": 9}
    assert d["feature_dim"] == 8 and d["k"] == 4 and d["views"] == ["vlm"]
    pos = [b for b in bags if b.label == 1]
    area = [float(np.mean(b.tumour_fraction)) for b in pos]
    assert d["tumour"]["positive_slides"] == 3
    assert d["tumour"]["area_fraction"]["max"] == pytest.approx(max(area), abs=1e-6)
    assert json.loads(json.dumps(d)) == d  # JSON-serialisable
    text = format_description(d)
    assert "normal: 3, tumour: 3" in text and "tumour area fraction" in text
    assert re.search(r"children per patch k\s+4\n", text)


def test_layout_detection_errors(tmp_path, layouts, bags):
    with pytest.raises(DataError, match=r"empty: matches no known dataset layout; looked for dataset.json"):
        (tmp_path / "empty").mkdir()
        open_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="not a named dataset"):
        open_dataset("synth-c17")
    with pytest.raises(DataError, match="named dataset has no folder layout"):
        open_dataset("synth-c16-tiny", format="clam")
    assert {"synth-c16", "synth-c16-tiny"} <= set(NAMED_DATASETS)
    root = layouts.write_clam(tmp_path / "clam", bags)
    assert detect_layout(root) == "clam"
    with pytest.raises(DataError, match="needs a labels CSV"):
        open_dataset(root)


def test_cli_describe(native, capsys):
    assert main(["data", "describe", str(native), "--fold", "1"]) == 0
    out = capsys.readouterr().out
    assert "dataset" in out and "tiny" in out and "fold 1 of 2" in out
    assert main(["data", "describe", str(native), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["slides"] == 6


def test_cli_convert_native_and_trident(tmp_path, native, layouts, bags, capsys):
    assert main(["data", "convert", str(native), str(tmp_path / "copy"), "--no-progress"]) == 0
    assert "6 slides written" in capsys.readouterr().out
    assert NativeDataset(tmp_path / "copy").splits == NativeDataset(native).splits

    job = layouts.write_trident(tmp_path / "job", bags)
    csv = layouts.write_labels(tmp_path / "labels.csv", bags, id_column="wsi", suffix=".tif")
    args = ["data", "convert", str(job), str(tmp_path / "conv"), "--labels", str(csv), "--no-progress"]
    assert main([*args, "--encoder", "uni_v1", "--lr-mag", "5", "--hr-mag", "20"]) == 0
    assert "6 slides written" in capsys.readouterr().out
    assert main(args) == 0  # resumed: nothing to do
    assert "0 slides written, 6 already complete" in capsys.readouterr().out
    bag = NativeDataset(tmp_path / "conv").load("slide_04")
    np.testing.assert_array_equal(bag.hr_mask, bags[4].hr_mask)


def test_cli_convert_clam_with_children(tmp_path, layouts, bags, capsys):
    root = layouts.write_clam(tmp_path / "c5", bags)
    hr_root = layouts.write_clam(tmp_path / "c20", bags, hr=True)
    csv = layouts.write_labels(tmp_path / "labels.csv", bags)
    args = ["data", "convert", str(root), str(tmp_path / "out"), "--labels", str(csv), "--no-progress"]
    args += ["--format", "clam", "--hr-root", str(hr_root), "--hr-patch-size-level0", str(layouts.C)]
    assert main(args) == 0 and "6 slides written" in capsys.readouterr().out
    bag = NativeDataset(tmp_path / "out").load("slide_03")
    np.testing.assert_array_equal(bag.hr_mask, bags[3].hr_mask)
    assert bag.meta.patch_size_level0 == layouts.P == 256
