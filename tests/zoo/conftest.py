"""Shared fixtures of the zoo tests: a tiny, learnable in-memory slide dataset."""

from __future__ import annotations

import pytest

from wsigym.data.memory import MemoryDataset
from wsigym.data.random_dataset import random_dataset


def _tiny(n_slides: int = 24, num_classes: int = 2, seed: int = 0) -> MemoryDataset:
    """Random bags (N in [12, 30], d = 32, k = 4 children) where class ``c > 0`` slides hold 3 instances
    (and their children) shifted by 3 along feature block ``c``, so both low-res and high-res models can
    learn the label; class 0 slides are pure noise. One fold, split 1/2, 1/4, 1/4 within every class."""
    return random_dataset(
        n_slides,
        (12, 30),
        32,
        children=4,
        classes=num_classes,
        signal=3.0,
        seed=seed,
        name=f"tiny-{num_classes}c",
    )


@pytest.fixture(scope="session")
def tiny_dataset() -> MemoryDataset:
    """24 binary bags, d = 32, k = 4."""
    return _tiny()


@pytest.fixture(scope="session")
def tiny_dataset_3c() -> MemoryDataset:
    """36 three-class bags, d = 32, k = 4."""
    return _tiny(n_slides=36, num_classes=3, seed=1)


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
