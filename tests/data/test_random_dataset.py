"""random_dataset: shapes, the structure each knob promises, determinism, splits, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from wsigym.data.random_dataset import random_dataset

FIELDS = ("features", "coords", "hr_features", "hr_mask", "hr_coords", "tumour_fraction")


def _arrays(ds) -> list[np.ndarray]:
    return [
        getattr(ds.load(s), f) for s in ds.slide_ids() for f in FIELDS if getattr(ds.load(s), f) is not None
    ]


def test_shapes_dtypes_and_geometry():
    ds = random_dataset(5, (7, 11), 6, children=4, classes=3, tumour=0.5, views={"oracle": 0.1}, seed=2)
    assert ds.slide_ids() == ["s000", "s001", "s002", "s003", "s004"]
    assert ds.class_names == ("class0", "class1", "class2") and ds.name == "random"
    for i, sid in enumerate(ds.slide_ids()):
        bag = ds.load(sid)
        n = bag.n
        assert 7 <= n <= 11 and bag.dim == 6 and bag.k == 4 and bag.label == i % 3
        assert bag.features.dtype == np.float32 and bag.hr_features.dtype == np.float32
        assert bag.coords.shape == (n, 2) and bag.coords.dtype == np.int64
        assert bag.hr_features.shape == (n, 4, 6) and bag.hr_mask.shape == (n, 4) and bag.hr_mask.all()
        assert bag.hr_coords.shape == (n, 4, 2) and bag.tumour_fraction.shape == (n,)
        assert bag.views["oracle"].shape == (n, 6) and bag.views["oracle"].dtype == np.float32
        # 2 x 2 children of 1024 px tile their 2048 px parent; parents are distinct grid cells
        assert (bag.meta.patch_size_level0, bag.meta.hr_patch_size_level0) == (2048, 1024)
        assert (bag.meta.lr_magnification, bag.meta.hr_magnification) == (5.0, 10.0)
        offsets = bag.hr_coords - bag.coords[:, None, :]
        assert offsets[0].tolist() == [[0, 0], [1024, 0], [0, 1024], [1024, 1024]]
        assert len({tuple(c) for c in bag.coords.tolist()}) == n
        assert set(np.unique(bag.tumour_fraction)) <= ({0.0, 1.0} if bag.label else {0.0})
        bag.validate(sid)
    bare = random_dataset(2, 9, 3).load("s001")
    assert (
        bare.hr_features is None and bare.hr_mask is None and bare.tumour_fraction is None and not bare.views
    )
    assert bare.coords.tolist() == [[x * 2048, y * 2048] for y in range(3) for x in range(3)]


def test_deterministic_given_seed_and_seeds_differ():
    kw = {"children": 4, "clusters": 3, "children_from": "parent", "off_tissue": 0.5, "tumour": 0.3}
    a, b = random_dataset(6, (10, 20), 8, seed=4, **kw), random_dataset(6, (10, 20), 8, seed=4, **kw)
    c = random_dataset(6, (10, 20), 8, seed=5, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b), strict=True))
    assert a.splits == b.splits
    assert not all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(c), strict=False)
    )


def test_signal_shifts_class_block_only():
    ds = random_dataset(6, 20, 8, classes=2, children=1, signal=50.0, signal_patches=2)
    for sid in ds.slide_ids():
        bag = ds.load(sid)
        shifted = (bag.features[:, :4] > 25).all(axis=1)
        assert shifted.sum() == (2 if bag.label else 0)
        assert np.array_equal((bag.hr_features[:, 0, :4] > 25).all(axis=1), shifted)
        assert not (bag.features[:, 4:] > 25).any()


def test_children_from_parent_map_and_off_tissue():
    near = random_dataset(2, 30, 8, children=4, clusters=2, children_from="parent", child_noise=0.01)
    bag = near.load("s000")
    assert np.abs(bag.hr_features - bag.features[:, None, :]).max() < 0.1
    mapped = random_dataset(2, 30, 8, children=4, clusters=2, children_from="map").load("s001")
    assert np.array_equal(mapped.hr_features[:, 0], mapped.hr_features[:, 3])
    np.testing.assert_allclose(mapped.hr_features.mean(-1), 0.0, atol=1e-5)
    assert np.abs(mapped.hr_features[:, 0] - mapped.features).mean() > 0.3
    dropped = random_dataset(2, 200, 4, children=4, off_tissue=0.5).load("s000").hr_mask
    assert dropped[:, :3].all() and 0.3 < dropped[:, 3].mean() < 0.7


def test_clusters_share_centres_across_slides():
    ds = random_dataset(2, 40, 16, clusters=2, cluster_noise=0.01)
    a, b = (ds.load(s).features for s in ds.slide_ids())
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    assert ((b @ a.T) > 0.99).any(axis=1).all()  # every row of slide 1 sits on a centre of slide 0
    assert len(np.unique(np.round(a @ a.T, 1))) > 1  # and not on one centre only


def test_splits_stratified_and_tail():
    strat = random_dataset(12, 5, 2, classes=2)
    assert strat.splits == [
        {
            "train": ["s000", "s002", "s004", "s001", "s003", "s005"],
            "val": ["s006", "s007"],
            "test": ["s008", "s010", "s009", "s011"],
        }
    ]
    tail = random_dataset(6, 5, 2, split=(2, 1), name="t")
    assert (tail.split("train"), tail.split("val"), tail.split("test")) == (
        ["s000", "s001", "s002"],
        ["s003", "s004"],
        ["s005"],
    )
    assert random_dataset(3, 5, 2, split=(0, 0)).split("train") == ["s000", "s001", "s002"]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n_slides": 0}, "n_slides"),
        ({"n_patches": (5, 3)}, "n_patches"),
        ({"n_patches": 0}, "n_patches"),
        ({"dim": 0}, "dim"),
        ({"children": 3}, "children"),
        ({"classes": 0}, "classes"),
        ({"classes": ("a", "a")}, "classes"),
        ({"clusters": -1}, "clusters"),
        ({"children": 4, "children_from": "copy"}, "children_from"),
        ({"signal": 1.0, "signal_patches": 9}, "signal_patches"),
        ({"off_tissue": 1.5}, "off_tissue"),
        ({"children": 1, "off_tissue": 0.5}, "off_tissue"),
        ({"tumour": -0.1}, "tumour"),
        ({"cluster_noise": -1.0}, "cluster_noise"),
        ({"views": {"oracle": -1.0}}, "views"),
        ({"split": (3, 3)}, "split"),
        ({"split": "random"}, "split"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    args = {"n_slides": 4, "n_patches": 6, "dim": 4, **kwargs}
    with pytest.raises(ValueError, match=rf"random_dataset: {argument} must be"):
        random_dataset(**args)
