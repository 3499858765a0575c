"""A short soak: hundreds of loads, refusals and feature reads in one process keep the resident memory
bounded (no leak per call through the header checks, the meta build or the extraction records)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from faultkit import tiny_encoder

import zoo
from zoo.hub import ZooLoadError

GEOMETRY = {"lr_mag": 5.0, "hr_mag": 10.0, "patch_size": 128}


def _rss_mb() -> float:
    statm = Path("/proc/self/statm")
    if not statm.is_file():
        pytest.skip("needs /proc/self/statm (Linux)")
    import os

    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_soak_load_refuse_read_rss_bound(model_folder, small_slides, tmp_path):
    import json
    import shutil

    from wsigym.slides.extract import extract_features, read_slide_bag

    hostile = tmp_path / "hostile"
    shutil.copytree(model_folder, hostile)
    config = json.loads((hostile / "config.json").read_text())
    (hostile / "config.json").write_text(json.dumps({**config, "hidden": 60000}))
    encoder = tiny_encoder()
    extract_features(small_slides / "s0.svs", tmp_path / "job", encoder, progress=False, **GEOMETRY)
    x = torch.randn(1, 50, 8, generator=torch.Generator().manual_seed(0))

    def one_round() -> None:
        with torch.no_grad():
            assert zoo.load(str(model_folder))(x)["logits"].shape[-1] == 2
        with pytest.raises(ZooLoadError):
            zoo.load(str(hostile))
        with pytest.raises(ZooLoadError):
            zoo.load("")
        assert read_slide_bag(tmp_path / "job", "s0", "meancolour", **GEOMETRY).n >= 1

    for _ in range(20):  # warm-up: imports, allocator pools, caches
        one_round()
    start = _rss_mb()
    for _ in range(150):
        one_round()
    grown = _rss_mb() - start
    print(f"soak: RSS {start:.1f} MB -> {start + grown:.1f} MB over 150 rounds")
    assert grown < 40, f"RSS grew {grown:.1f} MB over 150 rounds"
