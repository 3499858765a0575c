"""Real round trips through huggingface_hub against the loopback Hub server of tests/conftest.py."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo import hub, pretrained
from zoo.cards import card_metrics
from zoo.cli import main as zoo_main
from zoo.hub import ZooLoadError

ROOT = Path(__file__).resolve().parents[2]
METRICS = {"accuracy": 0.8125, "auc": 0.875, "f1": 0.8, "f1_macro": 0.8117647058823529, "ece": 0.0625}


def _abmil(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return zoo.create_model("abmil", in_dim=8, hidden=16, attn_dim=16, **kw).eval()


def _bag(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 11, 8, generator=torch.Generator().manual_seed(seed))


def _same(a, b) -> bool:
    with torch.no_grad():
        x = _bag()
        return torch.equal(a(x)["logits"], b(x)["logits"]) and torch.equal(
            a(x)["attention"], b(x)["attention"]
        )


@pytest.fixture
def org(monkeypatch, tmp_path):
    """A fresh organisation per test (registered names resolve to it) and no shipped weights."""
    name = f"org-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("ZOO_HUB_ORG", name)
    monkeypatch.setattr(pretrained, "SHIPPED_WEIGHTS", tmp_path / "shipped")
    return name


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ---------------------------------------------------------------------------------------------- round trip
def test_push_info_download_load_offline_and_revision(hub_server, org, tmp_path):
    from huggingface_hub import HfApi

    repo = f"{org}/abmil-roundtrip"
    first = _abmil(seed=0)
    sha1 = first.push_to_hub(repo, metrics=METRICS, dataset_name="synth-c16")
    info = HfApi().model_info(repo)
    assert info.sha == sha1
    assert info.library_name == "wsigym-zoo"
    assert {"config.json", "model.safetensors", "README.md", "metrics.json"} <= {
        s.rfilename for s in info.siblings
    }
    assert "abmil" in info.tags and "pathology" in info.tags
    assert {r.metric_name: r.metric_value for r in info.card_data.eval_results}["Accuracy"] == METRICS[
        "accuracy"
    ]

    loaded = zoo.load(repo)
    assert type(loaded) is type(first) and not loaded.training
    assert loaded.config == first.config and _same(first, loaded)
    snapshot = hub.pull(repo)
    assert snapshot.name == sha1
    assert card_metrics((snapshot / "README.md").read_text()) == METRICS
    assert f'zoo.load("{repo}")' in (snapshot / "README.md").read_text()

    second = _abmil(seed=1)
    sha2 = second.push_to_hub(repo)
    assert sha2 != sha1
    assert _same(zoo.load(repo), second)
    assert _same(zoo.load(repo, revision=sha1), first)
    with pytest.raises(ZooLoadError, match="revision"):
        zoo.load(repo, revision="0" * 40)

    # registered name -> {org}/{name} on the server
    _abmil(seed=2).push_to_hub(f"{org}/abmil-camelyon16")
    assert _same(zoo.load("abmil-camelyon16"), _abmil(seed=2))

    # offline: a fresh process with HF_HUB_OFFLINE=1 (read at import) and a dead endpoint, same cache
    expected = {
        k: m(_bag())["logits"].tolist()
        for k, m in [("latest", second), ("pinned", first), ("name", _abmil(2))]
    }
    code = f"""
import json, torch, zoo
from zoo.hub import ZooLoadError
x = torch.randn(1, 11, 8, generator=torch.Generator().manual_seed(1))
out = {{k: zoo.load(*a)(x)["logits"].tolist() for k, a in
       [("latest", ({repo!r},)), ("pinned", ({repo!r}, {sha1!r})), ("name", ("abmil-camelyon16",))]}}
try:
    zoo.load("acmil-camelyon16")
except ZooLoadError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""
    proc = _run(code, HF_HUB_OFFLINE="1", HF_ENDPOINT=_closed_port())
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key, value in expected.items():
        assert out[key] == value, key
    assert "HF_HUB_OFFLINE=1" in out["error"] and "not in the cache" in out["error"]
    assert f"zoo push runs/acmil-camelyon16 {org}/acmil-camelyon16" in out["error"]


def test_unreachable_and_uncached_name_gives_training_command(tmp_path):
    code = """
import zoo
try:
    zoo.load("semamil-camelyon16")
except zoo.hub.ZooLoadError as e:
    print(e)
"""
    endpoint = _closed_port()
    proc = _run(code, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "empty-home"), ZOO_HUB_ORG="mylab")
    assert proc.returncode == 0, proc.stderr
    assert "mylab/semamil-camelyon16 is not reachable at " + endpoint in proc.stdout
    assert "not in the cache" in proc.stdout
    assert (
        "zoo train semamil --dataset /path/to/CAMELYON16/features_5x --format clam --labels /path/to/labels.csv"
        " --reader hr_root=/path/to/CAMELYON16/features_20x patch_size_level0=2048 hr_patch_size_level0=512"
        " --out runs/semamil-camelyon16 && zoo push runs/semamil-camelyon16 mylab/semamil-camelyon16"
    ) in proc.stdout


def test_missing_repo_and_wrong_architecture_on_hub(hub_server, org):
    with pytest.raises(ZooLoadError, match="does not exist") as err:
        zoo.load("transmil-camelyon16")
    assert f"zoo push runs/transmil-camelyon16 {org}/transmil-camelyon16" in str(err.value)
    _abmil().push_to_hub(f"{org}/acmil-camelyon16")  # an ABMIL published under an ACMIL name
    with pytest.raises(ZooLoadError, match=r"config\.json: describes architecture 'abmil'.*'acmil'"):
        zoo.load("acmil-camelyon16")
    with pytest.raises(ZooLoadError, match="load_policy"):
        zoo.load("ppo-WSIZoom-v0")
    with pytest.raises(ZooLoadError, match="not a model folder, a registered name or a Hub repo id"):
        zoo.load("no such thing")


def test_shipped_weights_are_used_first(org, tmp_path):
    model = _abmil(seed=3)
    model.save_pretrained(pretrained.SHIPPED_WEIGHTS / "abmil-synth-c16")
    assert pretrained.PRETRAINED["abmil-synth-c16"].is_shipped()
    assert _same(zoo.load("abmil-synth-c16"), model)  # no server repo exists for this org


def test_server_rejects_invalid_card_yaml(hub_server, org, tmp_path):
    folder = tmp_path / "artefact"
    folder.mkdir()
    (folder / "README.md").write_text("---\ntags: [unclosed\n---\n# x\n")
    (folder / "policy.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    with pytest.raises(ValueError, match="Invalid metadata"):
        hub.push_folder(folder, f"{org}/bad-card")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# ok\n")
    sha = hub.push_folder(folder, f"{org}/artefact")
    pulled = hub.pull(f"{org}/artefact", revision=sha)
    assert (pulled / "policy.zip").read_bytes() == (folder / "policy.zip").read_bytes()


# ---------------------------------------------------------------------------------------------- saving
def test_save_pretrained_files_atomic_and_extra_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("kept")
    model = _abmil()
    out = hub.save_pretrained(model, run, extra_files={"descriptions/classes.yaml": b"tumour: dark nuclei\n"})
    assert out == run
    assert (run / "train.log").read_text() == "kept"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    config = json.loads((run / "config.json").read_text())
    assert config == model.config_dict()
    assert not (run / "metrics.json").exists()
    assert "Not evaluated" in (run / "README.md").read_text()
    assert "model-index" not in (run / "README.md").read_text()
    assert (run / "descriptions" / "classes.yaml").read_bytes() == b"tumour: dark nuclei\n"
    assert _same(hub.load_folder(run), model)
    hub.save_pretrained(model, run, metrics={"accuracy": 0.5, "auc": float("nan")})
    assert json.loads((run / "metrics.json").read_text()) == {"accuracy": 0.5, "auc": None}
    fresh = hub.save_pretrained(model, tmp_path / "new" / "abmil")
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["abmil"]
    with pytest.raises(ValueError, match="relative path"):
        hub.save_pretrained(model, tmp_path / "x", extra_files={"../escape": b""})


def test_tied_weights_round_trip(tmp_path):
    model = _abmil()
    model.attention.gate_branch.weight = model.attention.tanh_branch.weight  # same Parameter twice
    hub.save_pretrained(model, tmp_path / "tied")
    stored = load_file(str(tmp_path / "tied" / "model.safetensors"))
    assert "attention.gate_branch.weight" not in stored
    loaded = hub.load_folder(tmp_path / "tied")
    assert torch.equal(loaded.attention.gate_branch.weight, model.attention.tanh_branch.weight)
    assert _same(loaded, model)


# ---------------------------------------------------------------------------------------------- strictness
@pytest.fixture
def saved(tmp_path) -> Path:
    return hub.save_pretrained(_abmil(), tmp_path / "m")


def _rewrite(folder: Path, change) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor(saved):
    _rewrite(saved, lambda t: t.pop("classifier.bias"))
    with pytest.raises(ZooLoadError, match=r"model\.safetensors: .*missing tensors \[classifier\.bias\]"):
        zoo.load(str(saved))
    assert hub.load(str(saved), strict=False) is not None


def test_unexpected_tensor(saved):
    _rewrite(saved, lambda t: t.update(extra=torch.zeros(2)))
    with pytest.raises(ZooLoadError, match=r"unexpected tensors \[extra\]"):
        zoo.load(str(saved))


def test_shape_mismatch(saved):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "hidden": 32}))
    with pytest.raises(ZooLoadError, match=r"shape mismatches \[.*file \(16, 8\) vs model \(32, 8\)"):
        zoo.load(str(saved))


def test_config_of_another_model(saved):
    (saved / "config.json").write_text(json.dumps({"architecture": "transmil", "in_dim": 8}))
    with pytest.raises(
        ZooLoadError, match=r"weights of a 'abmil' model, but .*config\.json describes 'transmil'"
    ):
        zoo.load(str(saved))
    (saved / "config.json").write_text(json.dumps({"architecture": "resnet", "in_dim": 8}))
    with pytest.raises(ZooLoadError, match=r"config\.json: 'architecture' must be one of"):
        zoo.load(str(saved))
    (saved / "config.json").write_text(json.dumps({"architecture": "abmil", "in_dim": 8, "bogus": 1}))
    with pytest.raises(ZooLoadError, match="bogus"):
        zoo.load(str(saved))
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ZooLoadError, match=r"config\.json: not valid JSON"):
        zoo.load(str(saved))
    (saved / "config.json").unlink()
    with pytest.raises(ZooLoadError, match=r"config\.json: missing"):
        hub.load_folder(saved)


def test_truncated_and_corrupt_weights(saved):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ZooLoadError, match=r"model\.safetensors: not a valid safetensors file.*truncated"):
        zoo.load(str(saved))
    path.write_bytes(b"\x80\x04pickle" * 10)
    with pytest.raises(ZooLoadError, match=r"model\.safetensors: not a valid safetensors file"):
        zoo.load(str(saved))


# ---------------------------------------------------------------------------------------------- registry + CLI
def test_registry_covers_every_family_and_dataset():
    names = zoo.list()
    for arch in zoo.list_architectures():
        for dataset in ("camelyon16", "synth-c16"):
            entry = pretrained.PRETRAINED[f"{arch}-{dataset}"]
            assert entry.architecture == arch and entry.kind == "mil"
            assert f"{arch}-{dataset}" in names
    assert pretrained.PRETRAINED["ppo-WSIZoom-v0"].kind == "sb3"
    assert "zoo train hafed" in pretrained.PRETRAINED["tsu-camelyon16"].command("o")


def test_cli_push_pull_info_list(hub_server, org, tmp_path, capsys):
    run = hub.save_pretrained(_abmil(), tmp_path / "runs" / "my-run", metrics=METRICS)
    assert f'zoo.load("{org}/my-run")' in (run / "README.md").read_text()
    repo = f"{org}/abmil-camelyon16"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    assert zoo_main(["push", str(run), repo]) == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before  # untouched
    assert zoo_main(["pull", "abmil-camelyon16"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert f'zoo.load("{repo}")' in (folder / "README.md").read_text()  # card rendered for the repo
    assert (folder / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert zoo_main(["info", "abmil-camelyon16"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["architecture"] == "abmil" and info["parameters"] == _abmil().num_parameters()
    assert info["card_metrics"] == METRICS
    assert zoo_main(["list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"{repo}\s+cached", listing) and "semamil-camelyon16" in listing
    assert zoo_main(["pull", "not a repo"]) == 2
    assert "neither a registered name nor a Hub repo id" in capsys.readouterr().err


def test_cli_train_wiring(monkeypatch, tmp_path):
    import wsigym.data.formats as dataset_module
    import zoo.train
    from zoo.cli import parse_overrides

    assert parse_overrides(["hidden=256", "gated=false", "view=hr", "k=[1,2]"]) == {
        "hidden": 256,
        "gated": False,
        "view": "hr",
        "k": [1, 2],
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["hidden"])
    calls = {}
    monkeypatch.setattr(
        dataset_module, "open_dataset", lambda name, **kw: calls.setdefault("open", (name, kw))
    )
    monkeypatch.setattr(
        zoo.train, "train_and_save", lambda *a, **kw: calls.setdefault("train", (a, kw)) and tmp_path
    )
    argv = ["train", "abmil", "--dataset", "/feats", "--format", "clam", "--labels", "l.csv", "--fold", "2"]
    assert zoo_main([*argv, "--epochs", "3", "--out", str(tmp_path), "--config", "hidden=64"]) == 0
    assert calls["open"] == ("/feats", {"format": "clam", "labels": "l.csv"})
    args, kwargs = calls["train"]
    assert args[0] == "abmil" and args[1] == calls["open"]
    assert kwargs == {
        "out_dir": tmp_path,
        "fold": 2,
        "seed": 0,
        "config": {"hidden": 64},
        "setup": None,
        "epochs": 3,
        "progress": True,
    }


def test_tsu_card_command_matches_the_makefile():
    """The tsu-synth-c16 card's reproduce command trains what ``make synth-weights`` trains (SASHA's f_S)."""
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    lines = makefile.replace("\\\n", " ").splitlines()
    tsu_train = next(line.split(":=", 1)[1] for line in lines if line.startswith("TSU_TRAIN"))
    make_args = " ".join(tsu_train.split()).replace("$(ZOO) ", "zoo ")
    hafed = next(line for line in lines if "train hafed" in line).split("$(ZOO) ", 1)[1]
    command = pretrained.PRETRAINED["tsu-synth-c16"].command("o")
    assert f"{make_args} --out runs/tsu-synth-c16" in command
    assert hafed.strip() in command
    assert "residual" not in command and "similarity=abs_cosine" in command
