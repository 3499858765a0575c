"""Feature extraction under faults: ``kill -9`` mid-job then a rerun, and resuming a job folder with
another network under the same encoder name (other weights, another random initialisation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest
from faultkit import ROOT, one_line_error, run_console, tiny_encoder

from wsigym.slides.extract import (
    IDENTITY_FILE,
    EncoderMismatchError,
    encoder_identity,
    extract_features,
    extract_folder,
    output_paths,
    read_slide_bag,
)

GEOMETRY = {"lr_mag": 5.0, "hr_mag": 10.0, "patch_size": 128}
CLI_GEOMETRY = ["--lr-mag", "5", "--hr-mag", "10", "--patch-size", "128"]


def _paths(job, slide, encoder_name="resnet10t"):
    return output_paths(
        job, slide, encoder_name, GEOMETRY["lr_mag"], GEOMETRY["hr_mag"], GEOMETRY["patch_size"]
    )


def test_kill_9_mid_extract_then_rerun_resumes_with_the_same_network(small_slides, tmp_path):
    job = tmp_path / "job"
    argv = ["--threads", "1", "slides", "extract", str(small_slides), "--job-dir", str(job)]
    argv += ["--encoder", "timm:resnet10t", "--no-progress", "--batch-size", "8", *CLI_GEOMETRY]
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsigym", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = _paths(job, "s0")["hr_features"]
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # mid-job: s0 done, s1 under way
    proc.wait()
    assert not _paths(job, "s2")["hr_features"].exists()
    done_mtime = {k: p.stat().st_mtime_ns for k, p in _paths(job, "s0").items()}
    dead = _paths(job, "s1")["lr_features"]
    dead.parent.mkdir(parents=True, exist_ok=True)
    stale = dead.with_name(f".{dead.name}.999999999.tmp")  # what a killed writer leaves behind
    stale.write_bytes(b"half an HDF5 file")

    rerun = run_console("wsigym", argv, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    assert {k: p.stat().st_mtime_ns for k, p in _paths(job, "s0").items()} == done_mtime  # resumed
    assert not stale.exists() and not list(job.rglob("*.tmp"))
    record = json.loads((first.parent / IDENTITY_FILE).read_text())
    assert record["weights"] == "random initialisation (torch seed 0)" and len(record["weights_sha256"]) == 64
    for slide in ("s0", "s1", "s2"):
        bag = read_slide_bag(job, slide, "resnet10t", **GEOMETRY)
        assert bag.n >= 1 and bag.k == 4 and bag.dim == 512
        with h5py.File(_paths(job, slide)["lr_features"], "r") as f:
            assert f["features"].attrs["encoder_sha256"] == record["weights_sha256"]

    # another random initialisation under the same name: one line, exit 2, nothing touched
    before = {p: p.stat().st_mtime_ns for p in job.rglob("*")}
    refused = run_console("wsigym", [*argv, "--seed", "1"], timeout=120)
    line = one_line_error(refused, "wsigym slides extract: error: ")
    assert "features_resnet10t: holds features of another network" in line and "--overwrite" in line
    assert {p: p.stat().st_mtime_ns for p in job.rglob("*")} == before


def test_resume_with_other_weights_is_refused_and_overwrite_recomputes(small_slides, tmp_path):
    slide = small_slides / "s0.svs"
    first, second = tiny_encoder(seed=0), tiny_encoder(seed=1)
    paths = extract_features(slide, tmp_path, first, progress=False, **GEOMETRY)
    assert encoder_identity(first) == encoder_identity(tiny_encoder(seed=0))  # reproducible from the seed
    assert encoder_identity(first)["weights_sha256"] != encoder_identity(second)["weights_sha256"]
    with pytest.raises(EncoderMismatchError, match=r"features_meancolour: holds features of another network"):
        extract_features(slide, tmp_path, second, progress=False, **GEOMETRY)
    with pytest.raises(EncoderMismatchError):  # skip mode does not skip past it
        extract_folder(small_slides, tmp_path, second, on_error="skip", progress=False, **GEOMETRY)
    extract_features(slide, tmp_path, second, progress=False, overwrite=True, **GEOMETRY)
    recorded = json.loads((paths["lr_features"].parent / IDENTITY_FILE).read_text())
    assert recorded["weights_sha256"] == encoder_identity(second)["weights_sha256"]
    assert read_slide_bag(tmp_path, "s0", "meancolour", **GEOMETRY).dim == 4

    # another slide left from the first network is refused on read, naming the file
    extract_features(small_slides / "s1.svs", tmp_path / "other", first, progress=False, **GEOMETRY)
    old = output_paths(tmp_path / "other", "s1", "meancolour", 5.0, 10.0, 128)
    new = output_paths(tmp_path, "s1", "meancolour", 5.0, 10.0, 128)
    for key in ("lr_patches", "hr_patches", "lr_features", "hr_features"):
        new[key].parent.mkdir(parents=True, exist_ok=True)
        new[key].write_bytes(old[key].read_bytes())
    with pytest.raises(EncoderMismatchError, match=r"s1\.h5: made by another network"):
        read_slide_bag(tmp_path, "s1", "meancolour", **GEOMETRY)


def test_folder_without_a_record_is_refused(small_slides, tmp_path):
    encoder = tiny_encoder()
    paths = extract_features(small_slides / "s0.svs", tmp_path, encoder, progress=False, **GEOMETRY)
    for key in ("lr_features", "hr_features"):
        (paths[key].parent / IDENTITY_FILE).unlink()  # a job written before identities were recorded
    with pytest.raises(EncoderMismatchError, match=r"holds features but no encoder\.json"):
        extract_features(small_slides / "s1.svs", tmp_path, encoder, progress=False, **GEOMETRY)
    extract_features(small_slides / "s1.svs", tmp_path, encoder, progress=False, overwrite=True, **GEOMETRY)
    assert (paths["lr_features"].parent / IDENTITY_FILE).is_file()
