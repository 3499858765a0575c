"""Hostile model folders: configs that would allocate gigabytes or crash torch, weights of the wrong
dtype or with NaN/inf, an empty name. Each is refused with one error naming the file and the key or
tensor, before anything large is allocated; nothing broken is pushed."""

from __future__ import annotations

import json
import resource
import time

import pytest
import torch
from faultkit import tiny_abmil
from safetensors.torch import load_file, save_file

import zoo
from zoo import hub
from zoo.cli import main as zoo_main
from zoo.hub import ZooLoadError


def _set_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _rewrite_weights(folder, change) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt", "zoo.architecture": "abmil"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden": 60000}, r"key 'hidden' must be at most \d+ \(the number of weights stored"),
        ({"hidden": 10**12}, r"key 'hidden' must be an integer in \[0, 16777216\], got 1000000000000"),
        ({"hidden": -4}, r"key 'hidden' must be an integer in \[0, 16777216\], got -4"),
        ({"attn_dim": 0}, r"key 'attn_dim' must be an integer >= 1, got 0"),
        ({"hidden": "128"}, r"key 'hidden' must be an integer, got '128'"),
        ({"hidden": 16.5}, r"key 'hidden' must be an integer, got 16.5"),
        ({"hidden": True}, r"key 'hidden' must be an integer, got True"),
        ({"dropout": float("nan")}, r"key 'dropout' must be a finite number, got nan"),
        ({"gated": "yes"}, r"key 'gated' must be true or false, got 'yes'"),
        ({"view": ["lr"]}, r"key 'view' must be a string"),
        ({"in_dim": None}, r"key 'in_dim' must be an integer, got None"),
        ({"view": "xr"}, r"config\.json: .*view must be 'lr' or 'hr', got 'xr'"),
        ({"hidden": 32}, r"shape mismatches \[.*file \(16, 8\) vs model \(32, 8\)"),
        ({"architecture": ["abmil"]}, r"'architecture' must be one of"),
    ],
)
def test_hostile_config_is_refused_before_allocation(model_folder, changes, message):
    _set_config(model_folder, **changes)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(ZooLoadError, match=message) as err:
        zoo.load(str(model_folder))
    assert str(model_folder / "config.json") in str(err.value) or "model.safetensors" in str(err.value)
    assert time.monotonic() - start < 5
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 200  # hidden=60000 used to allocate ~14 GB and abort the process


def test_huge_layer_count_is_refused_without_building(tmp_path):
    torch.manual_seed(0)
    folder = zoo.create_model("semamil", in_dim=8, hidden=8, attn_dim=8, n_layers=1).save_pretrained(
        tmp_path / "sema"
    )
    _set_config(folder, n_layers=10**7)  # would build ten million Mamba layers
    start = time.monotonic()
    with pytest.raises(ZooLoadError, match=r"key 'n_layers' must be at most \d+"):
        zoo.load(str(folder))
    assert time.monotonic() - start < 5


def test_create_model_checks_types_and_ranges():
    with pytest.raises(ValueError, match=r"ABMILConfig: key 'hidden' must be an integer >= 1, got 0"):
        zoo.create_model("abmil", hidden=0)
    with pytest.raises(ValueError, match=r"key 'dropout' must be a number, got 'x'"):
        zoo.create_model("abmil", dropout="x")
    assert zoo.create_model("lrmil", hr_dim=None).config.hr_dim is None
    assert zoo.create_model("wisefuse", background_classes=[1]).config.background_classes == [1]
    with pytest.raises(
        ValueError, match="background_classes' must be a list whose items are each an integer"
    ):
        zoo.create_model("wisefuse", background_classes=["a"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: t.update({"classifier.weight": t["classifier.weight"].to(torch.int64)}),
            r"wrong dtypes \[classifier\.weight: I64 where the model holds float32\]",
        ),
        (
            lambda t: t.update({"classifier.weight": t["classifier.weight"] > 0}),
            r"wrong dtypes \[classifier\.weight: BOOL where the model holds float32\]",
        ),
        (
            lambda t: t.update({k: torch.full_like(v, float("nan")) for k, v in t.items()}),
            r"tensors with NaN or inf values \[attention",
        ),
        (
            lambda t: t["classifier.bias"].__setitem__(0, float("inf")),
            r"tensors with NaN or inf values \[classifier\.bias\]",
        ),
    ],
)
def test_wrong_dtype_and_non_finite_weights_are_refused(model_folder, change, message):
    _rewrite_weights(model_folder, change)
    with pytest.raises(ZooLoadError, match=r"model\.safetensors: .*" + message):
        zoo.load(str(model_folder))


def test_half_precision_weights_load_as_float32(model_folder):
    _rewrite_weights(model_folder, lambda t: t.update({k: v.half() for k, v in t.items()}))
    model = zoo.load(str(model_folder))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_nan_model_is_not_pushed(hub_server, model_folder):
    _rewrite_weights(model_folder, lambda t: t["classifier.bias"].__setitem__(0, float("nan")))
    commits_before = sum(1 for method, _ in hub_server.log if method == "POST")
    with pytest.raises(ZooLoadError, match="NaN or inf") as err:
        hub.push_folder(model_folder, "faults-org/nan-model")
    assert str(err.value).startswith(str(model_folder / "model.safetensors"))
    model = tiny_abmil()
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    with pytest.raises(ZooLoadError, match="NaN or inf"):
        model.push_to_hub("faults-org/nan-model")
    assert sum(1 for method, _ in hub_server.log if method == "POST") == commits_before


def test_empty_name_is_refused(tmp_path, monkeypatch, capsys):
    tiny_abmil().save_pretrained(tmp_path)  # a model in the current folder must not be picked up
    monkeypatch.chdir(tmp_path)
    for name in ("", "  "):
        with pytest.raises(ZooLoadError, match="empty model name"):
            zoo.load(name)
    assert zoo_main(["info", ""]) == 2
    assert "empty model name" in capsys.readouterr().err
