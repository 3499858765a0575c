"""SB3-native policy files: slim zip, MaskablePPO.load, huggingface_sb3.load_from_hub from the local
Hub-compatible server, rl-zoo3 config.yml / env_kwargs.yml, mean_reward in the card, replay GIF."""

from __future__ import annotations

import json
import uuid
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from wsigym.agents.ppo import make_model, save_policy
from wsigym.agents.publish import write_card
from wsigym.agents.recipes import PPOConfig
from wsigym.agents.saved_policy import POLICY_WEIGHTS, load_policy
from wsigym.agents.sb3_export import export_sb3
from wsigym.evaluate import EvalReport, evaluate
from zoo import cards


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_dataset, models):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from wsigym.envs.zoom import WSIZoomEnv

    hafed, tsu = models
    kw = {"dataset": tiny_dataset, "hafed": hafed, "tsu": tsu, "progress": False}
    config = PPOConfig(
        env_kwargs={**kw, "budget": 0.2, "reward": "delta_ce"},
        n_envs=1,
        n_steps=8,
        batch_size=8,
        path="plain",
    )
    model = make_model(config, DummyVecEnv([lambda: WSIZoomEnv(**kw)]))
    folder = tmp_path_factory.mktemp("policy")
    save_policy(model, folder, config)
    summary = export_sb3(folder, n_eval_episodes=3, env_overrides=kw, progress=False)
    return folder, summary, kw


def test_files_and_slim_zip(exported):
    folder, summary, _ = exported
    zip_path = folder / "ppo-WSIZoom-v0.zip"
    assert summary["zip"] == zip_path.name
    for name in ("config.yml", "env_kwargs.yml", "replay.gif", "sb3.json"):
        assert (folder / name).is_file(), name
    assert zip_path.stat().st_size < 2 * (folder / POLICY_WEIGHTS).stat().st_size + 200_000
    with zipfile.ZipFile(zip_path) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
        optimiser = torch.load(z.open("policy.optimizer.pth"), weights_only=True)
    assert optimiser["state"] == {}  # never stepped: no Adam moments
    config = yaml.load((folder / "config.yml").read_text(), Loader=yaml.UnsafeLoader)  # rl-zoo3 reads it so
    assert isinstance(config, OrderedDict) and list(config) == sorted(config)
    assert config["policy"] == "wsigym.agents.policy.PatchPolicy" and config["n_steps"] == 8
    env_kwargs = yaml.safe_load((folder / "env_kwargs.yml").read_text())
    dataset = exported[2]["dataset"]
    largest = max(dataset.load(sid).n for sid in dataset.slide_ids())
    assert env_kwargs == {"budget": 0.2, "reward": "delta_ce", "max_patches": largest}
    assert "dataset" not in env_kwargs  # an in-memory dataset has no name to record
    gif = Image.open(folder / "replay.gif")
    assert gif.n_frames > 1
    assert json.loads((folder / "sb3.json").read_text()) == summary
    assert np.isfinite(summary["mean_reward"]) and summary["n_eval_episodes"] == 3


def test_zip_loads_and_acts_like_the_policy(exported):
    from sb3_contrib import MaskablePPO

    from wsigym.envs.zoom import WSIZoomEnv

    folder, _, kw = exported
    model = MaskablePPO.load(folder / "ppo-WSIZoom-v0.zip", device="cpu")
    agent = load_policy(folder)
    env = WSIZoomEnv(**kw, split="test")
    obs, info = env.reset(seed=0)
    for _ in range(3):
        action, _ = model.predict(obs, deterministic=True, action_masks=env.action_masks())
        assert int(action) == agent(obs, info)
        obs, _, term, trunc, info = env.step(int(action))
        if term or trunc:
            break


def test_load_from_hub_and_card(exported, hub_server, tmp_path):
    from huggingface_sb3 import load_from_hub
    from sb3_contrib import MaskablePPO

    from zoo import hub

    folder, summary, kw = exported
    report = evaluate(
        [str(folder)],
        names=["ppo"],
        dataset=kw["dataset"],
        split="test",
        seeds=(0,),
        env_kwargs={k: v for k, v in kw.items() if k != "dataset"},
        progress=False,
    )
    report.to_json(tmp_path / "r.json")
    again = EvalReport.from_json(tmp_path / "r.json")
    assert again.to_markdown() == report.to_markdown() and again.caption() == report.caption()
    card = write_card(folder, report).read_text()
    meta = cards.validate_hub_metadata(card, kind="agent")
    assert "datasets" not in meta and meta["pipeline_tag"] == "reinforcement-learning"
    found = cards.card_metrics(card)
    assert found["mean_reward"] == f"{summary['mean_reward']:.2f} +/- {summary['std_reward']:.2f}"
    assert "load_from_hub" in card and "config.yml" in card
    repo = f"org-{uuid.uuid4().hex[:8]}/ppo-WSIZoom-v0"
    hub.push_folder(folder, repo)
    path = load_from_hub(repo, "ppo-WSIZoom-v0.zip")
    model = MaskablePPO.load(path, device="cpu")
    assert model.observation_space == load_policy(folder).policy.observation_space


def test_bad_folder(tmp_path):
    with pytest.raises(ValueError, match="not a policy folder"):
        export_sb3(tmp_path)


def test_shipped_policy_zip_matches_the_safetensors():
    """The shipped zip (``wsigym sb3-export zoo/assets/weights/ppo-WSIZoom-v0``) holds the shipped weights."""
    from pathlib import Path

    from safetensors.torch import load_file
    from sb3_contrib import MaskablePPO

    import zoo

    folder = Path(zoo.__file__).parent / "assets" / "weights" / "ppo-WSIZoom-v0"
    model = MaskablePPO.load(folder / "ppo-WSIZoom-v0.zip", device="cpu")
    weights = load_file(str(folder / POLICY_WEIGHTS))
    state = model.policy.state_dict()
    assert set(state) == set(weights) and all(torch.equal(state[k], weights[k]) for k in weights)
    assert (folder / "ppo-WSIZoom-v0.zip").stat().st_size < 5_000_000
    summary = json.loads((folder / "sb3.json").read_text())
    card = (folder / "README.md").read_text()
    assert cards.card_metrics(card)["mean_reward"] == (
        f"{summary['mean_reward']:.2f} +/- {summary['std_reward']:.2f}"
    )
    assert yaml.safe_load((folder / "env_kwargs.yml").read_text())["max_patches"] == model.action_space.n
