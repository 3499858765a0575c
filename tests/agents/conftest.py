"""Tiny slides (d = 16) and random HAFED / TSU models for the agent tests (shared with tests/envs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import zoo

_spec = importlib.util.spec_from_file_location(
    "envs_tiny_conftest", Path(__file__).resolve().parents[1] / "envs" / "conftest.py"
)
_envs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_envs)
tiny_dataset_of = _envs.tiny_dataset_of
DIM = _envs.DIM


@pytest.fixture(scope="session")
def tiny_dataset():
    return tiny_dataset_of(count=8)


@pytest.fixture(scope="session")
def no_truth_dataset():
    return tiny_dataset_of(count=4, truth=False, name="tiny-notruth")


@pytest.fixture(scope="session")
def models():
    torch.manual_seed(0)
    hafed = zoo.create_model("hafed", in_dim=DIM, attn_dim=16).eval()
    tsu = zoo.create_model("tsu", in_dim=DIM, tau=0.9).eval()
    return hafed, tsu


@pytest.fixture()
def env_kwargs(tiny_dataset, models) -> dict:
    hafed, tsu = models
    return {"dataset": tiny_dataset, "hafed": hafed, "tsu": tsu, "progress": False}
