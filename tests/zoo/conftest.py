"""Shared fixtures of the zoo tests: a tiny, learnable in-memory slide dataset."""

from __future__ import annotations

import numpy as np
import pytest

from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.memory import MemoryDataset


class TinyDataset(MemoryDataset):
    """Random bags where class ``c > 0`` slides hold a few instances shifted along feature block ``c``.

    Each slide has ``N`` in [12, 30] low-res patches of width ``dim`` on a grid and ``k`` high-res
    children per patch (children of a shifted patch are shifted too), so both low-res and high-res
    models can learn the label. Class 0 slides are pure noise. One fold, split train/val/test = 1/2,
    1/4, 1/4 with every class in every split.
    """

    def __init__(
        self, n_slides: int = 24, dim: int = 32, k: int = 4, num_classes: int = 2, seed: int = 0
    ) -> None:
        class_names = tuple(f"class{c}" for c in range(num_classes))
        rng = np.random.default_rng(seed)
        meta = SlideMeta(patch_size_level0=2048, hr_patch_size_level0=1024, encoder="random")
        block = max(1, dim // max(1, num_classes))
        bags: dict[str, SlideBag] = {}
        for i in range(n_slides):
            label = i % num_classes
            n = int(rng.integers(12, 31))
            z = rng.normal(size=(n, dim)).astype(np.float32)
            u = rng.normal(size=(n, k, dim)).astype(np.float32)
            if label > 0:
                hit = rng.choice(n, size=3, replace=False)
                z[hit, (label - 1) * block : label * block] += 3.0
                u[hit, :, (label - 1) * block : label * block] += 3.0
            side = int(np.ceil(np.sqrt(n)))
            grid = np.stack([np.arange(n) % side, np.arange(n) // side], axis=1).astype(np.int64)
            coords = grid * meta.patch_size_level0
            per = int(np.sqrt(k))
            offsets = np.stack([np.arange(k) % per, np.arange(k) // per], axis=1) * meta.hr_patch_size_level0
            hr_coords = (coords[:, None, :] + offsets[None]).astype(np.int64)
            sid = f"s{i:03d}"
            bags[sid] = SlideBag(
                slide_id=sid,
                features=z,
                coords=coords,
                label=label,
                class_names=class_names,
                hr_features=u,
                hr_mask=np.ones((n, k), dtype=bool),
                hr_coords=hr_coords,
                meta=meta,
            ).validate(sid)
        ids = list(bags)
        by_class = [[s for s in ids if bags[s].label == c] for c in range(num_classes)]
        split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for members in by_class:
            m = len(members)
            n_train, n_val = m // 2, m // 4
            split["train"] += members[:n_train]
            split["val"] += members[n_train : n_train + n_val]
            split["test"] += members[n_train + n_val :]
        super().__init__(f"tiny-{num_classes}c", bags.values(), [split], class_names)


@pytest.fixture(scope="session")
def tiny_dataset() -> TinyDataset:
    """24 binary bags, d = 32, k = 4."""
    return TinyDataset()


@pytest.fixture(scope="session")
def tiny_dataset_3c() -> TinyDataset:
    """36 three-class bags, d = 32, k = 4."""
    return TinyDataset(n_slides=36, num_classes=3, seed=1)


def _padding_check(
    model, in_dim: int, n_a: int = 9, n_b: int = 17, seed: int = 0, atol: float = 1e-5
) -> None:
    """Eval-mode outputs of two bags alone equal their rows of a padded batch; padding gets 0 attention."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n_a, in_dim, generator=gen), torch.randn(n_b, in_dim, generator=gen)
    feats = torch.zeros(2, n_b, in_dim)
    feats[0, :n_a], feats[1] = a, b
    feats[0, n_a:] = 100.0  # garbage in the padding must not leak
    mask = torch.zeros(2, n_b, dtype=torch.bool)
    mask[0, :n_a], mask[1] = True, True
    model.eval()
    with torch.no_grad():
        single_a, single_b = ({k: v[0] for k, v in model(x[None]).items()} for x in (a, b))
        batched = model(feats, mask=mask)
    for key in ("logits", "attention"):
        assert single_a[key].shape[0] == (model.config.num_classes if key == "logits" else n_a)
        torch.testing.assert_close(
            batched[key][0][: single_a[key].shape[0]], single_a[key], atol=atol, rtol=1e-4
        )
        torch.testing.assert_close(batched[key][1], single_b[key], atol=atol, rtol=1e-4)
    assert torch.all(batched["attention"][0, n_a:] == 0)
    torch.testing.assert_close(batched["attention"].sum(-1), torch.ones(2), atol=1e-4, rtol=0)
    assert torch.all(batched["attention"] >= 0)


@pytest.fixture
def check_padding_invariance():
    """``check(model, in_dim)``: see :func:`_padding_check`."""
    return _padding_check
