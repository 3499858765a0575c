"""Tiny synthetic slides and random HAFED / TSU models for the environment tests."""

from __future__ import annotations

import pytest
import torch

import zoo
from wsigym.data.memory import MemoryDataset
from wsigym.data.random_dataset import random_dataset

DIM = 16
K = 4


def tiny_dataset_of(
    count: int = 6, seed: int = 0, truth: bool = True, name: str = "tiny", n: int | None = None
) -> MemoryDataset:
    """``count`` slides with N in [20, 60] (or ``n``), d = 16, k = 4 children, clustered features,
    tumour truth (unless ``truth=False``); the last two slides are val and test.

    Features come from 4 cluster centres plus noise, so that a cosine threshold of 0.9 puts several
    patches in the similar set of a zoomed patch; children are their parent plus noise, the last child
    of a patch is off tissue with probability 0.3, a patch of a tumour slide is tumour with probability 0.3.
    """
    return random_dataset(
        count,
        (20, 60) if n is None else n,
        DIM,
        children=K,
        classes=("normal", "tumour"),
        clusters=4,
        cluster_noise=0.25,
        children_from="parent",
        child_noise=0.5,
        off_tissue=0.3,
        tumour=0.3 if truth else None,
        scatter=True,
        split=(1, 1),
        seed=seed,
        name=name,
    )


@pytest.fixture(scope="session")
def make_tiny_dataset():
    """:func:`tiny_dataset_of` itself, for tests that need a variant (``from conftest import`` is
    ambiguous: every test folder has a ``conftest``)."""
    return tiny_dataset_of


@pytest.fixture(scope="session")
def tiny_dataset() -> MemoryDataset:
    return tiny_dataset_of()


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
