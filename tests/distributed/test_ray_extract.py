"""``slides extract`` on Ray: the same files as the local backend, one error per bad slide without
losing the others, one encoder load per worker process and job, at most ``workers`` slides at once,
resumption after a killed job, and the CLI's ``--backend ray`` (``--workers``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from raykit import tiny_encoder, write_slides

from wsigym.slides.extract import extract_folder, output_paths

GEOMETRY = {"lr_mag": 5.0, "hr_mag": 10.0, "patch_size": 128}
SLIDES = ("s0", "s1", "s2", "s3")


def _paths(job: Path, slide: str, encoder: str = "meancolour") -> dict[str, Path]:
    return output_paths(job, slide, encoder, GEOMETRY["lr_mag"], GEOMETRY["hr_mag"], GEOMETRY["patch_size"])


def _arrays(job: Path, slide: str, encoder: str = "meancolour") -> dict[str, np.ndarray]:
    out = {}
    for key, path in _paths(job, slide, encoder).items():
        with h5py.File(path, "r") as f:
            for name in f:
                out[f"{key}/{name}"] = f[name][:]
    return out


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """Four good slides and one that is not a slide."""
    folder = write_slides(tmp_path_factory.mktemp("ray-slides"), len(SLIDES))
    (folder / "bad.svs").write_text("not a slide")
    return folder


@pytest.fixture(scope="module")
def local_job(slides, tmp_path_factory) -> tuple[Path, dict, dict]:
    job = tmp_path_factory.mktemp("local") / "job"
    done, failed = extract_folder(slides, job, tiny_encoder(), on_error="skip", progress=False, **GEOMETRY)
    return job, done, failed


def test_ray_extraction_equals_local_and_reports_the_bad_slide(ray_cluster, slides, local_job, tmp_path):
    from wsigym.distributed.extraction import extract_folder_ray

    local, local_done, local_failed = local_job
    job = tmp_path / "job"
    done, failed = extract_folder_ray(
        slides, job, tiny_encoder(), on_error="skip", progress=False, **GEOMETRY
    )
    assert sorted(done) == sorted(local_done) == list(SLIDES)
    assert failed == local_failed and list(failed) == ["bad"]
    assert str(slides / "bad.svs") in failed["bad"] and "\n" not in failed["bad"]
    for slide in SLIDES:
        ours, theirs = _arrays(job, slide), _arrays(local, slide)
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{slide} {key}")

    from wsigym.errors import DataError

    stats: dict = {}
    with pytest.raises(DataError, match=r"bad\.svs"):  # on_error="raise": the slide's own error, unwrapped
        extract_folder_ray(slides, tmp_path / "job2", tiny_encoder(), progress=False, stats=stats, **GEOMETRY)
    assert stats["workers"] == 2  # default: as many slides at once as the 2-CPU cluster holds


def test_each_worker_process_loads_the_encoder_once_per_job(ray_cluster, slides, local_job, tmp_path):
    """Two jobs of five slides each: every worker process that runs slides of a job unpickles that
    job's encoder once (not once per slide), a second job loads its own encoder again, and the files
    equal the local backend's."""
    from wsigym.distributed.extraction import extract_folder_ray

    log = tmp_path / "loads.txt"
    processes = []
    for run in ("a", "b"):
        stats: dict = {}
        job = tmp_path / f"job-{run}"
        done, failed = extract_folder_ray(
            slides,
            job,
            tiny_encoder(load_log=log),
            workers=2,
            on_error="skip",
            progress=False,
            stats=stats,
            **GEOMETRY,
        )
        assert list(done) == list(SLIDES) and list(failed) == ["bad"]
        assert stats["workers"] == 2 and stats["processes"]
        assert sum(p["slides"] for p in stats["processes"]) == len(SLIDES) + 1
        assert all(p["loads"] == 1 and p["load_s"] > 0 for p in stats["processes"]), stats["processes"]
        processes += stats["processes"]
        for slide in SLIDES:
            ours, theirs = _arrays(job, slide), _arrays(local_job[0], slide)
            for key in ours:
                np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{slide} {key}")
    loads = [int(line) for line in log.read_text().split()]
    assert sorted(loads) == sorted(p["pid"] for p in processes)  # one load per process and job, there


KILLED_JOB = """
import sys
from raykit import tiny_encoder
from wsigym.distributed.cluster import connect
from wsigym.distributed.extraction import extract_folder_ray
connect(num_cpus=1, num_gpus=0)
extract_folder_ray(sys.argv[1], sys.argv[2], tiny_encoder(delay=0.3), progress=False,
                   lr_mag=5, hr_mag=10, patch_size=128)
"""


def test_killed_ray_job_resumes(ray_cluster, slides, local_job, tmp_path):
    """kill -9 of the driver after the first slide: the rerun keeps that slide's files as they are,
    computes the rest and gives the local backend's features."""
    from wsigym.distributed.extraction import extract_folder_ray

    good = tmp_path / "slides"
    good.mkdir()
    for slide in SLIDES:
        os.symlink(slides / f"{slide}.svs", good / f"{slide}.svs")
    job = tmp_path / "job"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), str(Path(__file__).parent)]),
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_JOB, str(good), str(job)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first = _paths(job, "s0")["hr_features"]
    deadline = time.monotonic() + 180
    try:
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the job ended before it could be killed"
        assert first.exists(), "the first slide was not done in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the cluster it started
        proc.wait()
    assert not _paths(job, "s3")["hr_features"].exists()
    kept = {k: p.stat().st_mtime_ns for k, p in _paths(job, "s0").items()}

    done, failed = extract_folder_ray(good, job, tiny_encoder(), progress=False, **GEOMETRY)
    assert sorted(done) == list(SLIDES) and not failed
    assert {k: p.stat().st_mtime_ns for k, p in _paths(job, "s0").items()} == kept
    assert not list(job.rglob("*.tmp"))
    local = local_job[0]
    for slide in SLIDES:
        ours, theirs = _arrays(job, slide), _arrays(local, slide)
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{slide} {key}")


def test_cli_backend_ray(ray_cluster, slides, tmp_path, capsys):
    from wsigym.cli import main as wsigym_main

    two = tmp_path / "slides"
    two.mkdir()
    for name in ("s1.svs", "bad.svs"):
        os.symlink(slides / name, two / name)
    argv = ["--threads", "1", "slides", "extract", str(two), "--encoder", "timm:resnet10t", "--skip-errors"]
    argv += ["--no-progress", "--lr-mag", "5", "--hr-mag", "10", "--patch-size", "128"]
    ray_argv = [*argv, "--job-dir", str(tmp_path / "ray"), "--backend", "ray", "--workers", "1"]
    assert wsigym_main(ray_argv) == 1  # one bad slide
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == ["s1"]
    assert err.count("FAILED bad:") == 1 and "Traceback" not in err
    assert wsigym_main([*argv, "--job-dir", str(tmp_path / "local")]) == 1
    ours, theirs = (
        _arrays(tmp_path / "ray", "s1", "resnet10t"),
        _arrays(tmp_path / "local", "s1", "resnet10t"),
    )
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    capsys.readouterr()
    assert wsigym_main([*argv, "--job-dir", str(tmp_path / "x"), "--address", "auto"]) == 2
    assert "--address is only used with --backend ray" in capsys.readouterr().err
    assert wsigym_main([*argv, "--job-dir", str(tmp_path / "x"), "--workers", "2"]) == 2
    assert "--workers is only used with --backend ray" in capsys.readouterr().err
