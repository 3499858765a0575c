from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wsigym.cli import main
from wsigym.errors import DataError
from wsigym.slides.extract import read_slide_bag
from wsigym.slides.thumbnail import render_thumbnail


def test_info(cmu, capsys):
    assert main(["slides", "info", str(cmu)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base_magnification"] == 20 and info["level_dimensions"] == [[2220, 2967]]


def test_thumbnail_draws_contours_and_grid(cmu, tmp_path, capsys):
    out = tmp_path / "thumb.png"
    assert main(["slides", "thumbnail", str(cmu), "--out", str(out), "--max-size", "512"]) == 0
    img = np.asarray(Image.open(out).convert("RGB"))
    assert max(img.shape[:2]) == 512
    assert (img == [0, 170, 0]).all(axis=2).sum() > 200  # tissue contours
    assert (img == [20, 60, 230]).all(axis=2).sum() > 200  # low-res patch squares


def test_thumbnail_without_mpp_draws_contours_only(tcga):
    img = np.asarray(render_thumbnail(tcga, max_size=256))
    assert (img == [0, 170, 0]).all(axis=2).any()
    assert not (img == [20, 60, 230]).all(axis=2).any()
    with_grid = np.asarray(render_thumbnail(tcga, max_size=256, mpp=0.5))
    assert (with_grid == [20, 60, 230]).all(axis=2).any()


def test_extract_command(cmu, tmp_path, capsys):
    argv = ["slides", "extract", str(cmu), "--job-dir", str(tmp_path), "--encoder", "timm:resnet10t"]
    assert main([*argv, "--no-progress", "--batch-size", "16"]) == 0
    assert "cmu_small_region" in capsys.readouterr().out
    bag = read_slide_bag(tmp_path, "cmu_small_region", "resnet10t")
    assert bag.dim == 512 and bag.k == 16
    assert main([*argv, "--weights", str(tmp_path / "missing.safetensors")]) == 2  # one line, no traceback
    assert "missing.safetensors: weights file not found" in capsys.readouterr().err
    with pytest.raises(DataError, match="weights file not found"):
        main(["--debug", *argv, "--weights", str(tmp_path / "missing.safetensors")])


def test_extract_command_reports_bad_slides(cmu, tmp_path, capsys):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"")
    argv = ["slides", "extract", str(bad), "--job-dir", str(tmp_path / "job"), "--encoder", "timm:resnet10t"]
    assert main([*argv, "--skip-errors", "--no-progress"]) == 1
    assert "FAILED bad" in capsys.readouterr().err
    assert main([*argv, "--no-progress"]) == 2
    assert "bad.svs" in capsys.readouterr().err
    with pytest.raises(DataError, match="empty"):
        main(["--debug", *argv, "--no-progress"])
