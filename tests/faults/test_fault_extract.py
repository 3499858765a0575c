"""Feature extraction under faults: ``kill -9`` mid-job then a rerun, and resuming a job folder with
another network under the same encoder name (other weights, another random initialisation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
from faultkit import ROOT, tiny_encoder

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


KILLED_JOB = """
import sys
from faultkit import tiny_encoder
from wsigym.slides.extract import extract_folder
extract_folder(sys.argv[1], sys.argv[2], tiny_encoder(seed=0), progress=False, lr_mag=5, hr_mag=10, patch_size=128)
"""


def test_kill_9_mid_extract_then_rerun_resumes(tiny_slides, tmp_path):
    job = tmp_path / "job"
    command = [sys.executable, "-c", KILLED_JOB, str(tiny_slides), str(job)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = _paths(job, "s0", "meancolour")["hr_features"]
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # mid-job: s0 done, s1 under way
    proc.wait()
    assert not _paths(job, "s4", "meancolour")["hr_features"].exists()
    done_mtime = {k: p.stat().st_mtime_ns for k, p in _paths(job, "s0", "meancolour").items()}
    dead = _paths(job, "s1", "meancolour")["lr_features"]
    stale = dead.with_name(f".{dead.name}.999999999.tmp")  # what a killed writer leaves behind
    stale.write_bytes(b"half an HDF5 file")

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert {k: p.stat().st_mtime_ns for k, p in _paths(job, "s0", "meancolour").items()} == done_mtime
    assert not stale.exists() and not list(job.rglob("*.tmp"))
    record = json.loads((first.parent / IDENTITY_FILE).read_text())
    for slide in ("s0", "s1", "s2", "s3", "s4"):
        bag = read_slide_bag(job, slide, "meancolour", **GEOMETRY)
        assert bag.n >= 1 and bag.k == 4 and bag.dim == 4
        with h5py.File(_paths(job, slide, "meancolour")["lr_features"], "r") as f:
            assert f["features"].attrs["encoder_sha256"] == record["weights_sha256"]


def test_cli_rerun_rebuilds_the_seeded_network_and_refuses_another(tiny_slides, tmp_path, capsys):
    from wsigym.cli import main as wsigym_main
    from wsigym.slides.encoders import build_encoder

    job = tmp_path / "job"
    torch.set_num_threads(1)
    torch.manual_seed(0)  # what `wsigym slides extract` does without --weights (--seed 0)
    encoder = build_encoder("timm:resnet10t")
    identity = encoder_identity(encoder, weights="random initialisation (torch seed 0)")
    extract_folder([tiny_slides / "s0.svs"], job, encoder, progress=False, identity=identity, **GEOMETRY)
    before = {p: p.stat().st_mtime_ns for p in job.rglob("*")}
    argv = ["--threads", "1", "slides", "extract", str(tiny_slides / "s0.svs"), "--job-dir", str(job)]
    argv += ["--encoder", "timm:resnet10t", "--no-progress", *CLI_GEOMETRY]
    assert wsigym_main(argv) == 0  # the same network again: nothing to redo
    assert {p: p.stat().st_mtime_ns for p in job.rglob("*")} == before
    capsys.readouterr()
    assert wsigym_main([*argv, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    line = err.strip()
    assert line.startswith("wsigym slides extract: error: ")
    assert "features_resnet10t: holds features of another network" in line and "--overwrite" in line
    assert "weights_sha256" in line
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
