"""Shared fixtures of the slide tests: real slides, one synthetic Aperio TIFF, a tiny random encoder."""

from __future__ import annotations

import pytest
import torch

from wsigym.slides.encoders import TorchPatchEncoder, timm_encoder
from wsigym.slides.synthetic_slides import SyntheticSlide, write_aperio_tiff


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    """8192^2 level-0 px at 0.25 um/px (40x), 3 levels, two tumour ellipses."""
    return write_aperio_tiff(tmp_path_factory.mktemp("synthetic") / "synthetic_40x.svs", seed=3)


@pytest.fixture(scope="session")
def tiny_encoder() -> TorchPatchEncoder:
    """Random-init ViT-Tiny at 32 px (no download)."""
    torch.manual_seed(0)
    return timm_encoder("vit_tiny_patch16_224", img_size=32, name="vit_tiny_rand32")
