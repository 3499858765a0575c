"""Fixtures for the data readers: tiny slide bags written in exactly the public file layouts (h5py)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from wsigym.data.bag import SlideBag, SlideMeta

P = 256  # low-res patch side, level-0 px
C = 128  # high-res child side, level-0 px -> k = 4
K = (P // C) ** 2
D = 8
CLASSES = ("normal", "tumour")


def make_bag(slide_id: str, label: int, n: int, seed: int, d: int = D) -> SlideBag:
    """A bag of ``n`` low-res patches on a 3-wide grid, each with 1..k valid children (all children valid
    for the first patch), truth on both levels."""
    rng = np.random.default_rng(seed)
    cols, rows = np.arange(n) % 3, np.arange(n) // 3
    coords = np.stack([cols, rows], 1).astype(np.int64) * P + np.array([1000, 2000])
    s = P // C
    r, c = np.divmod(np.arange(K), s)
    hr_coords = coords[:, None, :] + np.stack([c, r], 1)[None] * C
    mask = rng.random((n, K)) < 0.7
    mask[:, 0] = True
    mask[0] = True
    u = rng.standard_normal((n, K, d)).astype(np.float32) * mask[..., None]
    z = rng.standard_normal((n, d)).astype(np.float32)
    htf = (rng.random((n, K)) * label * mask).astype(np.float32)
    return SlideBag(
        slide_id=slide_id,
        features=z,
        coords=coords,
        label=label,
        class_names=CLASSES,
        hr_features=u,
        hr_mask=mask,
        hr_coords=hr_coords.astype(np.int64),
        tumour_fraction=htf.mean(1),
        hr_tumour_fraction=htf,
        meta=SlideMeta(patch_size_level0=P, hr_patch_size_level0=C, encoder="test"),
        views={"vlm": rng.standard_normal((n, 3)).astype(np.float32)},
    )


def make_bags(count: int = 6) -> list[SlideBag]:
    """``count`` bags alternating normal/tumour, N = 4..(4 + count - 1)."""
    return [make_bag(f"slide_{i:02d}", i % 2, 4 + i, seed=i) for i in range(count)]


def children_flat(bag: SlideBag) -> tuple[np.ndarray, np.ndarray]:
    """Valid children of a bag as a flat feature file would list them, in shuffled order: ((M, d), (M, 2))."""
    m = bag.hr_mask
    order = np.random.default_rng(len(bag.slide_id) + bag.n).permutation(int(m.sum()))
    return bag.hr_features[m][order], bag.hr_coords[m][order]


def write_labels(path: Path, bags: list[SlideBag], id_column: str = "slide_id", suffix: str = "") -> Path:
    lines = [f"case_id,{id_column},label"]
    lines += [f"case_{b.slide_id},{b.slide_id}{suffix},{CLASSES[b.label]}" for b in bags]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_clam(root: Path, bags: list[SlideBag], hr: bool = False) -> Path:
    """CLAM ``h5_files/<slide>.h5`` (features, coords; no attrs). ``hr=True`` writes the children flat."""
    (root / "h5_files").mkdir(parents=True, exist_ok=True)
    for b in bags:
        feats, coords = children_flat(b) if hr else (b.features, b.coords)
        with h5py.File(root / "h5_files" / f"{b.slide_id}.h5", "w") as f:
            f.create_dataset("features", data=feats)
            f.create_dataset("coords", data=coords)
    return root


def trident_level(job: Path, mag: int, ps: int, encoder: str = "uni_v1") -> Path:
    return job / f"{mag}x_{ps}px_0px_overlap" / f"features_{encoder}"


def write_trident(job: Path, bags: list[SlideBag], encoder: str = "uni_v1") -> Path:
    """TRIDENT job folder: 5x (256 px at 5x = P level-0) and 20x (C level-0) feature files."""
    for mag, is_hr, ps0 in ((5, False, P), (20, True, C)):
        folder = trident_level(job, mag, 256, encoder)
        folder.mkdir(parents=True, exist_ok=True)
        for b in bags:
            feats, coords = children_flat(b) if is_hr else (b.features, b.coords)
            with h5py.File(folder / f"{b.slide_id}.h5", "w") as f:
                ds = f.create_dataset("features", data=feats)
                ds.attrs.update({"name": b.slide_id, "encoder": encoder})
                cs = f.create_dataset("coords", data=coords.astype(np.int64))
                cs.attrs.update(
                    {
                        "patch_size": 256,
                        "patch_size_level0": ps0,
                        "level0_magnification": 40,
                        "target_magnification": mag,
                        "overlap": 0,
                        "name": b.slide_id,
                    }
                )
    return job


def write_sasha(root: Path, bags: list[SlideBag], pretrain: str = "medical_ssl") -> Path:
    """SASHA grouped files; every child is written (SASHA extracts all k)."""
    for res in ("lr", "hr"):
        (root / res / "h5_files").mkdir(parents=True, exist_ok=True)
        with h5py.File(root / res / "h5_files" / f"patch_feats_pretrain_{pretrain}.h5", "w") as f:
            for b in bags:
                g = f.create_group(b.slide_id)
                g.attrs["label"] = b.label
                if res == "lr":
                    g.create_dataset("feat", data=b.features.astype(np.float16))
                    g.create_dataset("coords", data=b.coords)
                else:
                    g.create_dataset("feat", data=b.hr_features.astype(np.float16))
                    g.create_dataset("coords", data=b.hr_coords)
    return root


def write_sasha_splits(folder: Path, bags: list[SlideBag], n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ids = [b.slide_id for b in bags]
    for seed in range(1, n + 1):
        split = {"train_names": ids[2:], "val_names": ids[1:2], "test_names": ids[:1]}
        (folder / f"split_{seed}.json").write_text(json.dumps(split))
    return folder


@pytest.fixture
def bags() -> list[SlideBag]:
    return make_bags()


class Layouts:
    """The builders above, for tests (a fixture, so test modules never import conftest)."""

    P, C, K, D, CLASSES = P, C, K, D, CLASSES
    make_bag = staticmethod(make_bag)
    make_bags = staticmethod(make_bags)
    children_flat = staticmethod(children_flat)
    write_labels = staticmethod(write_labels)
    write_clam = staticmethod(write_clam)
    trident_level = staticmethod(trident_level)
    write_trident = staticmethod(write_trident)
    write_sasha = staticmethod(write_sasha)
    write_sasha_splits = staticmethod(write_sasha_splits)


@pytest.fixture
def layouts() -> type[Layouts]:
    return Layouts
