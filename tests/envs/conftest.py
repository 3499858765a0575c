"""Tiny synthetic slides and random HAFED / TSU models for the environment tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.memory import MemoryDataset

DIM = 16
K = 4


class TinyDataset(MemoryDataset):
    """``count`` slides with N in [20, 60], d = 16, k = 4 children, clustered features, tumour truth.

    Features come from a few cluster centres plus noise, so that a cosine threshold of 0.9 puts
    several patches in the similar set of a zoomed patch.
    """

    def __init__(
        self, count: int = 6, seed: int = 0, truth: bool = True, name: str = "tiny", n: int | None = None
    ) -> None:
        class_names = ("normal", "tumour")
        rng = np.random.default_rng(seed)
        bags: dict[str, SlideBag] = {}
        centres = rng.normal(size=(4, DIM))
        for j in range(count):
            n_j = int(rng.integers(20, 61)) if n is None else n
            label = j % 2
            side = int(np.ceil(np.sqrt(n_j)))
            cells = rng.permutation(side * side)[:n_j]
            coords = np.stack([cells % side, cells // side], axis=1).astype(np.int64) * 2048
            cluster = rng.integers(0, 4, size=n_j)
            z = centres[cluster] + 0.25 * rng.normal(size=(n_j, DIM))
            u = z[:, None, :] + 0.5 * rng.normal(size=(n_j, K, DIM))
            hr_mask = np.ones((n_j, K), dtype=bool)
            hr_mask[:, -1] = rng.random(n_j) > 0.3
            tumour = (rng.random(n_j) < 0.3).astype(np.float32) * label if truth else None
            hr_coords = coords[:, None, :] + np.array([[0, 0], [512, 0], [0, 512], [512, 512]])[None]
            bag = SlideBag(
                slide_id=f"slide_{j}",
                features=z.astype(np.float32),
                coords=coords,
                label=label,
                class_names=class_names,
                hr_features=u.astype(np.float32),
                hr_mask=hr_mask,
                hr_coords=hr_coords.astype(np.int64),
                tumour_fraction=tumour,
                meta=SlideMeta(patch_size_level0=2048, hr_patch_size_level0=512),
            )
            bags[bag.slide_id] = bag
        ids = list(bags)
        splits = [{"train": ids[: count - 2], "val": ids[count - 2 : count - 1], "test": ids[count - 1 :]}]
        super().__init__(name, bags.values(), splits, class_names)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tiny tensors here run fastest single-threaded (and CI's 2 cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dataset_cls() -> type[TinyDataset]:
    """The class itself, for tests that need a variant (``from conftest import`` is ambiguous: every
    test folder has a ``conftest``)."""
    return TinyDataset


@pytest.fixture(scope="session")
def tiny_dataset() -> TinyDataset:
    return TinyDataset()


@pytest.fixture(scope="session")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    hafed = zoo.create_model("hafed", in_dim=DIM).eval()
    tsu = zoo.create_model("tsu", in_dim=DIM, tau=0.9).eval()
    return hafed, tsu


@pytest.fixture()
def env_kwargs(tiny_dataset, models) -> dict:
    hafed, tsu = models
    return {"dataset": tiny_dataset, "hafed": hafed, "tsu": tsu, "progress": False}
