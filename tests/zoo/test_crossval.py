"""Cross-validation: stratified folds, per-fold standardisation, and ``zoo train --cv`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.formats import open_dataset
from wsigym.data.native import slide_path, write_bag, write_dataset_index
from zoo.crossval import FeatureStandardiser, FoldDataset, cv_splits, stratified_folds


def write_public_style_mil(root, n_bags: int = 40, dim: int = 16, seed: int = 0):
    """A small MUSK-style MIL dataset in the native format: bags of 8-20 random instances; positive
    bags (every other one) hold 2 instances shifted along the first 4 features. Features have an
    offset of 5 and a scale of 3 (so standardisation changes them). One nominal split."""
    rng = np.random.default_rng(seed)
    classes = ("negative", "positive")
    labels = {}
    for i in range(n_bags):
        label = i % 2
        n = int(rng.integers(8, 21))
        x = 5.0 + 3.0 * rng.normal(size=(n, dim))
        if label:
            x[rng.choice(n, size=2, replace=False), :4] += 9.0
        coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int64)
        sid = f"bag{i:03d}"
        bag = SlideBag(
            slide_id=sid,
            features=x.astype(np.float32),
            coords=coords,
            label=label,
            class_names=classes,
            meta=SlideMeta(patch_size_level0=256, encoder="none"),
        )
        write_bag(bag, slide_path(root, sid), dtype="float32")
        labels[sid] = label
    ids = sorted(labels)
    write_dataset_index(root, "musk-like", classes, labels, [{"train": ids, "val": [], "test": []}])
    return root


@pytest.fixture(scope="module")
def mil_folder(tmp_path_factory):
    return write_public_style_mil(tmp_path_factory.mktemp("mil") / "musk-like")


def test_stratified_folds_are_balanced_deterministic_and_partition():
    labels = np.array([0] * 13 + [1] * 7)
    a = stratified_folds(labels, 4, np.random.default_rng([3, 0]))
    b = stratified_folds(labels, 4, np.random.default_rng([3, 0]))
    c = stratified_folds(labels, 4, np.random.default_rng([4, 0]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert sorted(np.concatenate(a).tolist()) == list(range(20))
    assert [len(f) for f in a] == [5, 5, 5, 5]
    for f in a:
        assert np.sum(labels[f] == 1) in (1, 2)  # 7 positives over 4 folds
    with pytest.raises(ValueError, match="fewer than the folds"):
        stratified_folds(labels, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match=">= 2"):
        stratified_folds(labels, 1, np.random.default_rng(0))


def test_cv_splits_disjoint_with_stratified_validation(mil_folder):
    ds = open_dataset(mil_folder)
    splits = cv_splits(ds, 4, repeats=2, seed=1, val_fraction=0.25)
    assert [(r, f) for r, f, _ in splits] == [(r, f) for r in range(2) for f in range(4)]
    for r in range(2):
        tests = [x for rr, _, s in splits if rr == r for x in s["test"]]
        assert sorted(tests) == ds.slide_ids()
    for _, _, s in splits:
        parts = [set(s[k]) for k in ("train", "val", "test")]
        assert sum(map(len, parts)) == 40 and not (parts[0] & parts[1] or parts[0] & parts[2])
        assert sorted(ds.label(x) for x in s["val"]) == [0] * 4 + [1] * 4
    assert splits[0][2] != splits[4][2]  # repeats draw new folds
    assert cv_splits(ds, 4, repeats=2, seed=1, val_fraction=0.25) == splits


def test_standardiser_uses_training_slides_only(mil_folder):
    ds = open_dataset(mil_folder)
    _, _, split = cv_splits(ds, 4, seed=0)[0]
    std = FeatureStandardiser.fit(ds, split["train"])
    train_rows = np.concatenate([ds.load(s, hr=False).features for s in split["train"]])
    np.testing.assert_allclose(std.lr_mean, train_rows.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.lr_std, train_rows.std(0), rtol=1e-4)
    view = FoldDataset(ds, split, std)
    rows = np.concatenate([view.load(s, hr=False).features for s in split["train"]])
    np.testing.assert_allclose(rows.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(rows.std(0), 1.0, atol=1e-4)
    assert view.split("test") == split["test"] and view.num_folds == 1
    raw = ds.load(split["test"][0], hr=False).features
    np.testing.assert_allclose(
        view.load(split["test"][0]).features, (raw - std.lr_mean) / std.lr_std, rtol=1e-5
    )


def test_zoo_train_cv_end_to_end(mil_folder, tmp_path, capsys):
    from zoo.cli import main
    from zoo.results import cv_summary

    out = tmp_path / "cv"
    argv = ["--threads", "1", "--quiet", "train", "abmil", "--dataset", str(mil_folder), "--cv", "4"]
    argv += ["--epochs", "6", "--lr", "2e-3", "--seed", "7", "--standardise", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "abmil (4-fold CV)" in printed and " ± " in printed
    cv = json.loads((out / "cv.json").read_text())
    assert cv["runs"] == ["r0-f0", "r0-f1", "r0-f2", "r0-f3"] and cv["standardise"] is True
    seen = []
    for f, run in enumerate(cv["runs"]):
        record = json.loads((out / run / "metrics.json").read_text())
        assert record["cv"]["fold"] == f and record["seed"] == 7 + f
        assert record["recipe"]["selection_used"] == "last" and record["best_epoch"] == 5  # no val split
        rows = (out / run / "test_predictions.csv").read_text().splitlines()
        assert rows[0] == "slide_id,label,prob_negative,prob_positive" and len(rows) == 11
        assert [r.split(",")[0] for r in rows[1:]] == record["cv"]["split"]["test"]
        seen += record["cv"]["split"]["test"]
        stats = json.loads((out / run / "standardisation.json").read_text())
        assert len(stats["lr"]["mean"]) == 16 and "hr" not in stats
    assert sorted(seen) == [f"bag{i:03d}" for i in range(40)]
    summary = cv_summary(out)
    accs = summary["accuracy"]["values"]
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert summary["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert cv["test"]["accuracy"]["mean"] == pytest.approx(summary["accuracy"]["mean"])
    assert summary["auc"]["mean"] > 0.8  # the planted instances are easy to find

    assert main(["results", str(out), str(out / "r0-f1")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].startswith("| abmil (4-fold CV) | musk-like |") and table[3].startswith("| abmil | ")


def test_cv_flags_need_cv(mil_folder, capsys):
    from zoo.cli import main

    assert main(["train", "abmil", "--dataset", str(mil_folder), "--repeats", "2"]) == 2
    assert "need --cv" in capsys.readouterr().err
    assert main(["train", "abmil", "--dataset", str(mil_folder), "--cv", "50", "--epochs", "1"]) == 2
    assert "fewer than the folds" in capsys.readouterr().err


def test_bad_cv_json_is_one_clear_error(tmp_path):
    from wsigym.errors import DataError
    from zoo.results import results_table

    (tmp_path / "cv.json").write_text('{"runs": []}')
    with pytest.raises(DataError, match="non-empty 'runs'"):
        results_table([tmp_path])


def test_threads_and_quiet_options():
    import torch

    from zoo.cli import apply_global_options, build_parser

    before = torch.get_num_threads()
    args = build_parser().parse_args(["--threads", "1", "--quiet", "results", "x"])
    try:
        apply_global_options(args)
        assert torch.get_num_threads() == 1 and args.quiet
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--threads", "0", "results", "x"])
