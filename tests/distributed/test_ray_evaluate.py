"""``evaluate(..., backend="ray")`` gives the local backend's report (timings aside)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from wsigym.evaluate import evaluate

_spec = importlib.util.spec_from_file_location(
    "envs_tiny_conftest_ray", Path(__file__).resolve().parents[1] / "envs" / "conftest.py"
)
_envs = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _envs
_spec.loader.exec_module(_envs)


def first_legal(obs, info):  # a user's own agent: a plain function
    return int(np.flatnonzero(obs["action_mask"])[0])


@pytest.fixture(scope="module")
def setting(ray_cluster):
    torch.manual_seed(0)
    hafed = zoo.create_model("hafed", in_dim=_envs.DIM, attn_dim=16).eval()
    tsu = zoo.create_model("tsu", in_dim=_envs.DIM, tau=0.9).eval()
    return {
        "dataset": _envs.tiny_dataset_of(count=8),
        "env_kwargs": {"hafed": hafed, "tsu": tsu, "progress": False},
    }


def _same(a, b) -> None:
    assert (a.dataset, a.split, a.env_id, a.slides, a.seeds) == (
        b.dataset,
        b.split,
        b.env_id,
        b.slides,
        b.seeds,
    )
    assert [(r.agent, r.budget) for r in a.rows] == [(r.agent, r.budget) for r in b.rows]
    for x, y in zip(a.rows, b.rows):
        assert len(x.per_seed) == len(y.per_seed)
        for sx, sy in zip(x.per_seed, y.per_seed):
            for key in sx:
                if key != "seconds_per_slide":
                    assert sx[key] == sy[key] or (math.isnan(sx[key]) and math.isnan(sy[key])), (x.agent, key)


@pytest.mark.parametrize("env_id", ["WSIZoom-v0", "WSIZoomGlobal-v0"])
def test_ray_report_equals_local(setting, env_id):
    agents = [first_legal, "random", "attention-topk", "oracle", "no-zoom", "full-hafed"]
    kwargs = dict(
        dataset=setting["dataset"],
        env_id=env_id,
        split="train",
        budgets=(0.1, 0.2),
        seeds=(0, 1),
        env_kwargs=setting["env_kwargs"],
        progress=False,
    )
    local = evaluate(agents, **kwargs)
    ray_report = evaluate(agents, backend="ray", **kwargs)
    _same(ray_report, local)
    by = {(r.agent, r.budget): r for r in ray_report.rows}
    assert by[("random", 0.2)].std["accuracy"] >= 0.0 and len(by[("random", 0.2)].per_seed) == 2
    assert by[("random", 0.1)].per_seed[0]["zooms"] > 0


def test_ray_backend_refuses_a_given_env(setting):
    import gymnasium as gym

    env = gym.make("WSIZoom-v0", dataset=setting["dataset"], split="train", **setting["env_kwargs"])
    with pytest.raises(ValueError, match="env= is local only"):
        evaluate("random", env=env, backend="ray", progress=False)
    with pytest.raises(ValueError, match="backend must be"):
        evaluate("random", env=env, backend="dask", progress=False)
    env.close()


def test_cli_evaluate_backend_ray(setting, tmp_path, capsys):
    """``wsigym evaluate --backend ray`` on a dataset folder and saved models: the local table."""
    import json

    from wsigym.cli import main as wsigym_main
    from wsigym.data.native import slide_path, write_bag, write_dataset_index

    ds = setting["dataset"]
    root = tmp_path / "tiny"
    for sid in ds.slide_ids():
        write_bag(ds.load(sid), slide_path(root, sid), dtype="float32")
    write_dataset_index(root, "tiny", ds.class_names, {s: ds.label(s) for s in ds.slide_ids()}, ds.splits)
    models = {}
    for name in ("hafed", "tsu"):
        models[name] = setting["env_kwargs"][name].save_pretrained(tmp_path / name)
    argv = ["--threads", "1", "evaluate", "--dataset", str(root), "--split", "train", "--no-progress"]
    argv += ["--hafed", str(models["hafed"]), "--tsu", str(models["tsu"]), "--seeds", "0", "1"]
    argv += ["--agent", "random", "--agent", "attention-topk"]
    reports = {}
    for backend in ("local", "ray"):
        assert wsigym_main([*argv, "--out", str(tmp_path / backend), "--backend", backend]) == 0
        reports[backend] = json.loads((tmp_path / backend / "results.json").read_text())
    capsys.readouterr()
    for a, b in zip(reports["local"]["rows"], reports["ray"]["rows"]):
        for sa, sb in zip(a["per_seed"], b["per_seed"]):
            assert {k: v for k, v in sa.items() if k != "seconds_per_slide"} == {
                k: v for k, v in sb.items() if k != "seconds_per_slide"
            }


def test_sources_are_shared_read_only_in_the_object_store(setting, ray_cluster):
    """A worker maps a source's flat tensors from the object store (no private copy) and gets the same rows."""
    import pickle

    import gymnasium as gym

    big = _envs.tiny_dataset_of(
        count=4, n=1000, name="tiny-1000"
    )  # > 100 kB per tensor: Ray keeps it in shared memory
    env = gym.make("WSIZoom-v0", dataset=big, split="train", **setting["env_kwargs"])
    source = env.unwrapped.source
    again = pickle.loads(pickle.dumps(source))
    assert torch.equal(again.v, source.v) and again.slide_ids == source.slide_ids

    @ray_cluster.remote(num_cpus=1)
    def probe(refs):
        import ray

        one, two = ray.get(refs[0]), ray.get(refs[0])  # two reads: one shared buffer, or two private copies
        return [
            one.v.data_ptr() == two.v.data_ptr(),
            float(one.v.double().sum()),
            one.index_of(one.slide_ids[-1]),
        ]

    shared, total, last = ray_cluster.get(probe.remote([ray_cluster.put(source)]))
    assert shared  # both are views of the object store's one copy
    assert total == pytest.approx(float(source.v.double().sum())) and last == len(source.slide_ids) - 1
    env.close()
