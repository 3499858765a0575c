"""Shared fixtures of the slide tests: real slides, one synthetic Aperio TIFF, a tiny random encoder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from wsigym.slides.encoders import TorchPatchEncoder, timm_encoder
from wsigym.slides.testslides import SyntheticSlide, write_aperio_tiff

# The real slides of ../shared/data (next to the checkout); WSIGYM_SHARED_DATA overrides, /work/shared/data
# is the workspace's copy (a clone elsewhere still finds it).
SLIDES = next(
    (
        p / "slides"
        for p in (
            Path(os.environ.get("WSIGYM_SHARED_DATA", "/nonexistent")),
            Path(__file__).resolve().parents[3] / "shared" / "data",
            Path("/work/shared/data"),
        )
        if (p / "slides").is_dir()
    ),
    Path(__file__).resolve().parents[3] / "shared" / "data" / "slides",
)
CMU = SLIDES / "cmu_small_region.svs"
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # two shared CPU cores: multi-threaded torch spins and is ~40x slower than one thread
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def real_slide(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real slide {path} not available")
    return path


@pytest.fixture(scope="session")
def cmu() -> Path:
    return real_slide(CMU)


@pytest.fixture(scope="session")
def tcga() -> Path:
    return real_slide(TCGA)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    """8192^2 level-0 px at 0.25 um/px (40x), 3 levels, two tumour ellipses."""
    return write_aperio_tiff(tmp_path_factory.mktemp("synthetic") / "synthetic_40x.svs", seed=3)


@pytest.fixture(scope="session")
def tiny_encoder() -> TorchPatchEncoder:
    """Random-init ViT-Tiny at 32 px (no download)."""
    torch.manual_seed(0)
    return timm_encoder("vit_tiny_patch16_224", img_size=32, name="vit_tiny_rand32")
