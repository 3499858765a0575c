"""Training sweeps: ``train ppo --seeds ... --backend ray`` (Ray Tune) writes the normal run folders,
the same as the local backend, and ``zoo train`` sweeps families x seeds."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import zoo
from wsigym.distributed.sweeps import grid_points, run_sweep, trial_name

_spec = importlib.util.spec_from_file_location(
    "envs_tiny_conftest_sweeps", Path(__file__).resolve().parents[1] / "envs" / "conftest.py"
)
_envs = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _envs
_spec.loader.exec_module(_envs)


def test_grid_and_names():
    points = grid_points({"recipe": ["sasha"], "update": [None, "global"], "seed": [0, 1]})
    assert [trial_name(p) for p in points] == [
        "sasha-seed0",
        "sasha-seed1",
        "sasha-global-seed0",
        "sasha-global-seed1",
    ]
    with pytest.raises(ValueError, match="'seed' has no value"):
        grid_points({"seed": []})


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The tiny dataset as a native folder, and saved HAFED / TSU folders (what a CLI user passes)."""
    from wsigym.data.native import slide_path, write_bag, write_dataset_index

    root = tmp_path_factory.mktemp("sweep-data")
    ds = _envs.tiny_dataset_of(count=6)
    for sid in ds.slide_ids():
        write_bag(ds.load(sid), slide_path(root / "tiny", sid), dtype="float32")
    labels = {s: ds.label(s) for s in ds.slide_ids()}
    write_dataset_index(root / "tiny", "tiny", ds.class_names, labels, ds.splits)
    torch.manual_seed(0)
    hafed = zoo.create_model("hafed", in_dim=_envs.DIM, attn_dim=16).eval()
    tsu = zoo.create_model("tsu", in_dim=_envs.DIM, tau=0.9).eval()
    return {
        "dataset": root / "tiny",
        "hafed": hafed.save_pretrained(root / "hafed"),
        "tsu": tsu.save_pretrained(root / "tsu"),
    }


def test_train_ppo_sweep_on_ray_equals_local(ray_cluster, folders, tmp_path, capsys):
    from wsigym.cli import main as wsigym_main

    argv = [
        "--threads",
        "1",
        "train",
        "ppo",
        "--dataset",
        str(folders["dataset"]),
        "--hafed",
        str(folders["hafed"]),
    ]
    argv += ["--tsu", str(folders["tsu"]), "--timesteps", "32", "--n-envs", "2", "--n-steps", "16"]
    argv += ["--batch-size", "16", "--epochs", "1", "--eval-freq", "32", "--checkpoint-freq", "1000"]
    argv += ["--no-progress", "--seeds", "1", "--updates", "tsu", "none"]
    records = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        assert wsigym_main([*argv, "--out", str(out), "--backend", backend]) == 0
        records[backend] = json.loads((out / "sweep.json").read_text())
        for run in ("sasha-tsu-seed1", "sasha-none-seed1"):
            assert (out / run / "policy.json").is_file() and (out / run / "train.json").is_file()
            assert list((out / run / "tb").rglob("events.out.tfevents.*")), f"{run}: no TensorBoard log"
    assert "2 runs" in capsys.readouterr().out
    local, ray_record = records["local"]["trials"], records["ray"]["trials"]
    assert [t["point"] for t in local] == [t["point"] for t in ray_record]
    for a, b in zip(local, ray_record):
        assert a["run"] == b["run"]
        same = {k for k in a["metrics"] if "seconds" not in k}  # timings differ, nothing else may
        assert same == {k for k in b["metrics"] if "seconds" not in k} and "accuracy" in same
        for key in same:
            x, y = a["metrics"][key], b["metrics"][key]
            assert x == y or (math.isnan(x) and math.isnan(y)), (a["run"], key)
        weights = [
            (tmp_path / backend / a["run"] / "policy.safetensors").read_bytes()
            for backend in ("local", "ray")
        ]
        assert weights[0] == weights[1], f"{a['run']}: other weights on Ray"
    seeds = [t["metrics"] for t in local if t["point"]["update"] == "tsu"]
    assert seeds[0]["timesteps"] >= 32


def test_run_sweep_reports_a_failed_trial(ray_cluster, tmp_path):
    def trial(point):
        if point["seed"] == 1:
            raise ValueError("seed 1 is bad")
        return {"score": float(point["seed"])}

    with pytest.raises(RuntimeError, match="seed1 failed"):
        run_sweep(trial, {"seed": [0, 1]}, tmp_path / "s", backend="ray", name="failing")
    record = run_sweep(trial, {"seed": [0]}, tmp_path / "t", backend="ray", name="fine")
    assert record == [{"point": {"seed": 0}, "run": "seed0", "metrics": {"score": 0.0}}]


def test_zoo_train_sweep_on_ray_equals_local(ray_cluster, folders, tmp_path, capsys):
    from zoo.cli import main as zoo_main

    argv = ["--threads", "1", "--quiet", "train", "abmil", "acmil", "--dataset", str(folders["dataset"])]
    argv += ["--epochs", "1", "--seeds", "0"]
    records = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        assert zoo_main([*argv, "--out", str(out), "--backend", backend]) == 0
        records[backend] = json.loads((out / "sweep.json").read_text())
        for run in ("abmil-seed0", "acmil-seed0"):
            assert (out / run / "metrics.json").is_file() and (out / run / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "| abmil" in printed and "| acmil" in printed
    for a, b in zip(records["local"]["trials"], records["ray"]["trials"]):
        assert a["run"] == b["run"] and "test_accuracy" in a["metrics"]
        for key, x in a["metrics"].items():
            if "per_s" not in key and "seconds" not in key:
                y = b["metrics"][key]
                assert x == y or (math.isnan(x) and math.isnan(y)), (a["run"], key)
