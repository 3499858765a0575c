"""train_ppo on tiny data, pickle-free save/load, the Hub card + push/pull round trip, CLI wiring."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from wsigym.agents.ppo import rollout_buffer_bytes, train_ppo
from wsigym.agents.publish import publish
from wsigym.agents.recipes import PPOConfig
from wsigym.agents.saved_policy import POLICY_CONFIG, POLICY_WEIGHTS, PolicyAgent, load_policy
from wsigym.agents.sb3_export import repo_name
from wsigym.cli import build_parser
from wsigym.evaluate import evaluate
from zoo import pretrained
from zoo.cards import card_metadata, card_metrics


def _tiny_env_kwargs(tiny_dataset, models) -> dict:
    hafed, tsu = models
    return {"dataset": tiny_dataset, "hafed": hafed, "tsu": tsu, "progress": False, "budget": 0.2}


def _tiny_config(env_kwargs: dict, **overrides) -> PPOConfig:
    """A PPO run of a few timesteps on the tiny dataset (2 envs x 16 steps, minibatch 16)."""
    settings = {"total_timesteps": 96, "n_envs": 2, "n_steps": 16, "batch_size": 16, "n_epochs": 2}
    return PPOConfig(env_kwargs=env_kwargs, **{**settings, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset, models):
    config = _tiny_config(_tiny_env_kwargs(tiny_dataset, models), eval_freq=64, checkpoint_freq=64)
    out = tmp_path_factory.mktemp("ppo-run")
    model = train_ppo(config, out, progress=False)
    return out, model


def test_train_writes_everything(run):
    out, model = run
    assert model.num_timesteps >= 96
    for name in (
        POLICY_WEIGHTS,
        POLICY_CONFIG,
        "ppo-WSIZoom-v0.zip",
        "train.json",
        "eval/evaluations.json",
        "last/policy.safetensors",
    ):
        assert (out / name).is_file(), name
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    assert list((out / "checkpoints").glob("*.zip"))
    best, kept = load_file(str(out / "best" / POLICY_WEIGHTS)), load_file(str(out / POLICY_WEIGHTS))
    assert all(torch.equal(best[k], kept[k]) for k in kept)  # keep="best": the root holds the best policy
    record = json.loads((out / "train.json").read_text())
    history = record["validation"]
    assert history[0]["timesteps"] == 0 and history[-1]["timesteps"] == model.num_timesteps
    assert all(0.0 <= h["accuracy"] <= 1.0 for h in history)
    assert record["path"] == "segments"
    padded = rollout_buffer_bytes(record["num_patches"], record["dim"], 16, 2)
    assert 0 < record["rollout_buffer_bytes"] < padded / 2  # rows of real patches, stored once per episode


def test_save_load_round_trip_same_actions(run, env_kwargs):
    out, model = run
    agent = load_policy(out)
    assert isinstance(agent, PolicyAgent)
    saved = model.policy.state_dict()
    for k, v in agent.policy.state_dict().items():
        assert torch.equal(v, saved[k].cpu()), k
    kw = {k: v for k, v in env_kwargs.items() if k != "dataset"}
    a = evaluate(model, dataset=env_kwargs["dataset"], split="val", seeds=(0,), env_kwargs=kw, progress=False)
    b = evaluate(
        str(out), dataset=env_kwargs["dataset"], split="val", seeds=(0,), env_kwargs=kw, progress=False
    )
    for ra, rb in zip(a.rows, b.rows, strict=True):
        for key in ("accuracy", "auc", "ece", "zooms", "tumour_hits"):
            assert ra.mean[key] == pytest.approx(rb.mean[key], nan_ok=True)


def test_load_errors_name_the_file(run, tmp_path):
    out, _ = run
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ValueError, match=POLICY_CONFIG):
        load_policy(bad)
    (bad / POLICY_CONFIG).write_text((out / POLICY_CONFIG).read_text())
    (bad / POLICY_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_policy(bad)
    tensors = load_file(str(out / POLICY_WEIGHTS))
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(bad / POLICY_WEIGHTS))
    with pytest.raises(ValueError, match="unexpected tensors"):
        load_policy(bad)
    tensors.pop("extra.weight")
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(bad / POLICY_WEIGHTS))
    with pytest.raises(ValueError, match="missing tensors"):
        load_policy(bad)


def test_card_push_pull_round_trip(run, env_kwargs, hub_server, monkeypatch, tmp_path):
    from zoo import hub

    out, _ = run
    org = f"org-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("ZOO_HUB_ORG", org)
    monkeypatch.setattr(pretrained, "SHIPPED_WEIGHTS", tmp_path / "shipped")
    kw = {k: v for k, v in env_kwargs.items() if k != "dataset"}
    report = evaluate(
        [str(out), "random"],
        names=["ppo", "random"],
        dataset=env_kwargs["dataset"],
        split="test",
        seeds=(0,),
        env_kwargs=kw,
        progress=False,
    )
    name = repo_name("ppo", "WSIZoom-v0")
    assert name == "ppo-WSIZoom-v0" == pretrained.PRETRAINED[name].repo_name
    repo = f"{org}/{name}"
    sha = publish(out, repo, report)
    card = (out / "README.md").read_text()
    meta = card_metadata(card)
    assert meta["library_name"] == "stable-baselines3" and "WSIZoom-v0" in meta["tags"]
    ppo20 = next(r for r in report.rows if r.agent == "ppo" and r.budget == 0.2)
    assert card_metrics(card)["accuracy"] == pytest.approx(ppo20.mean["accuracy"])
    assert "| random | 10% |" in card and "action masks" in card
    pulled = hub.pull(name, revision=sha)  # the registered name resolves to {org}/ppo-WSIZoom-v0
    assert (pulled / POLICY_WEIGHTS).read_bytes() == (out / POLICY_WEIGHTS).read_bytes()
    agent = load_policy(pulled)
    obs = {
        "state": np.zeros(5 * 16, np.float32),
        "patch_mask": np.ones(5, np.int8),
        "visited": np.zeros(5, np.int8),
        "updated": np.zeros(5, np.int8),
        "coords": np.zeros(10, np.float32),
        "budget": np.ones(1, np.float32),
        "action_mask": np.array([0, 0, 1, 0, 0], np.int8),
    }
    assert agent(obs, {}) == 2
    assert json.loads((pulled / "results.json").read_text())["rows"][0]["agent"] == "ppo"


def test_standardised_policy_trains_saves_and_loads(tmp_path, tiny_dataset, models):
    kwargs = _tiny_env_kwargs(tiny_dataset, models)
    with pytest.raises(ValueError, match="warm_start=False"):
        PPOConfig(env_kwargs=kwargs, standardise=True)
    config = _tiny_config(
        kwargs, total_timesteps=32, n_epochs=1, eval_freq=1000, standardise=True, warm_start=False
    )
    model = train_ppo(config, tmp_path, progress=False)
    agent = load_policy(tmp_path)
    assert agent.policy.standardise and json.loads((tmp_path / POLICY_CONFIG).read_text())["standardise"]
    env = gym.make("WSIZoom-v0", **kwargs)
    obs, _ = env.reset(seed=0)
    tensors, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        expected = model.policy.mlp_extractor.forward_actor(model.policy.extract_features(tensors))[0].numpy()
    assert np.allclose(agent.logits(obs), expected, atol=1e-4)


def test_cli_wiring():
    parser = build_parser()
    args = parser.parse_args(["train", "ppo", "--out", "runs/x", "--timesteps", "10"])
    assert args.timesteps == 10 and args.func.__name__ == "_train_ppo"
    args = parser.parse_args(
        ["train", "ppo", "--out", "runs/x", "--eval-freq", "pass", "--checkpoint-freq", "64"]
    )
    assert (args.eval_freq, args.checkpoint_freq) == ("pass", 64)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "ppo", "--out", "runs/x", "--eval-freq", "often"])
    args = parser.parse_args(["evaluate", "--agent", "random", "--agent", "oracle", "--budgets", "0.1"])
    assert args.agent == ["random", "oracle"] and args.budgets == [0.1]
    args = parser.parse_args(["evaluate", "--all", "--policy", "runs/x", "--readme", "README.md"])
    assert args.all and args.func.__name__ == "_evaluate"
    assert parser.parse_args(["demo"]).func.__name__ == "_demo"


@pytest.fixture
def cli_config(monkeypatch, tmp_path):
    """``(run folder, dict)``: ``train ppo`` then records the PPOConfig it would train with."""
    import wsigym.agents.ppo as ppo

    seen = {}

    def fake_train(config, out, progress=True):
        seen["config"] = config
        (Path(out) / "train.json").write_text(json.dumps({"timesteps": 0, "validation": []}))

    monkeypatch.setattr(ppo, "train_ppo", fake_train)
    out = tmp_path / "run"
    out.mkdir()
    return out, seen


def test_cli_passes_the_ppo_settings(cli_config):
    out, seen = cli_config
    argv = ["train", "ppo", "--out", str(out), "--reward", "delta_ce", "--gamma", "0", "--gae-lambda", "0.5"]
    argv += ["--clip-range", "0.3", "--hidden", "16", "--budget", "0.1", "--no-warm-start"]
    argv += ["--standardise", "--no-normalize-advantage", "--vf-coef", "0.25", "--max-grad-norm", "10"]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    config = seen["config"]
    assert (config.gamma, config.gae_lambda, config.clip_range, config.hidden) == (0.0, 0.5, 0.3, 16)
    assert config.env_kwargs["reward"] == "delta_ce" and config.env_kwargs["budget"] == 0.1
    assert not config.warm_start and config.standardise and not config.normalize_advantage
    assert (config.vf_coef, config.max_grad_norm) == (0.25, 10.0)


def test_cli_device_is_the_envs_and_policy_device_the_policys(cli_config):
    out, seen = cli_config
    base = ["train", "ppo", "--out", str(out)]
    for extra, env_device, policy_device in [
        ([], None, "cpu"),
        (["--device", "cuda"], "cuda", "cuda"),
        (["--device", "cuda", "--policy-device", "cpu"], "cuda", "cpu"),
        (["--policy-device", "cuda:1"], None, "cuda:1"),
    ]:
        args = build_parser().parse_args([*base, *extra])
        assert args.func(args) == 0
        assert (
            seen["config"].env_kwargs.get("device") == env_device and seen["config"].device == policy_device
        )


def test_cli_recipe_and_overrides(cli_config):
    import wsigym.agents.recipes as ppo

    out, seen = cli_config
    base = ["train", "ppo", "--out", str(out), "--recipe", "evidence-bandit"]
    args = build_parser().parse_args(base)
    assert args.func(args) == 0
    assert seen["config"] == ppo.ppo_config("evidence-bandit", env_kwargs={"dataset": "synth-c16", "fold": 0})
    assert seen["config"].env_kwargs["reward"] == "evidence" and seen["config"].gamma == 0.0
    args = build_parser().parse_args(
        [*base, "--budget", "0.1", "--lr", "1e-3", "--no-standardise", "--reward", "ce"]
    )
    assert args.func(args) == 0
    config = seen["config"]
    assert config.env_kwargs == {"dataset": "synth-c16", "fold": 0, "reward": "ce", "budget": 0.1}
    assert config.learning_rate == 1e-3 and not config.standardise and config.n_envs == 16
    args = build_parser().parse_args(["train", "ppo", "--out", str(out)])  # no recipe: SASHA's
    assert args.func(args) == 0
    assert seen["config"] == ppo.ppo_config("sasha", env_kwargs={"dataset": "synth-c16", "fold": 0})
    args = build_parser().parse_args(["train", "ppo", "--out", str(out), "--recipe", "sasha-sb3"])
    assert args.func(args) == 0
    assert seen["config"] == ppo.PPOConfig(env_kwargs={"dataset": "synth-c16", "fold": 0})
    with pytest.raises(ValueError, match="recipe must be one of"):
        ppo.ppo_config("fast")
    with pytest.raises(ValueError, match="unknown keys"):
        ppo.ppo_config("sasha", learning_rat=1.0)


def test_shipped_policy_is_the_evidence_bandit_recipe():
    """The README's training command for ``ppo-WSIZoom-v0`` is ``--recipe evidence-bandit``."""
    from wsigym.agents.recipes import ppo_config

    shipped = json.loads(
        (Path(zoo.__file__).parent / "assets/weights/ppo-WSIZoom-v0/policy.json").read_text()
    )
    recipe = asdict(ppo_config("evidence-bandit", env_kwargs={"dataset": "synth-c16", "fold": 0}))
    # trained before the ``tokens`` option (its tokens are the default) and on SB3's plain buffer
    assert recipe.pop("tokens") == "state+context" and recipe.pop("path") == "segments"
    # and before the optimiser / rollout / selection options (their defaults are what it used)
    assert (recipe.pop("optimizer"), recipe.pop("weight_decay")) == ("adam", 0.0)
    assert not recipe.pop("rollout_episodes") and recipe.pop("select_initial")
    assert recipe.pop("checkpoint_updates") == 10
    assert {k: v for k, v in shipped["ppo"].items() if k in recipe} == recipe


def _protocol(run, env_kwargs, tmp_path, **kwargs) -> str:
    """``run_protocol`` for the trained tiny policy on the tiny dataset, one seed, into tmp_path/results."""
    from wsigym.agents.benchmark import run_protocol

    out, _ = run
    kw = {k: v for k, v in env_kwargs.items() if k != "dataset"}
    return run_protocol(
        policy=str(out),
        dataset=env_kwargs["dataset"],
        seeds=(0,),
        env_kwargs=kw,
        out=tmp_path / "results",
        progress=False,
        **kwargs,
    ).markdown


def test_full_protocol_writes_tables_and_readme(run, env_kwargs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:tiny -->\nold table\n<!-- /results:tiny -->\nend\n")
    text = _protocol(run, env_kwargs, tmp_path, readme=readme)
    for agent in ("ppo", "attention-topk", "coverage", "random", "oracle", "no-zoom", "full-hafed"):
        assert f"| {agent} |" in text
    for rule in ("TSU", "global update", "no update"):
        assert f"| ppo | {rule} | 20% |" in text
    assert "different dataset" in text and "SASHA-0.2" in text
    data = json.loads((tmp_path / "results" / "results.json").read_text())
    assert set(data["ablation"]) == {"TSU", "global update", "no update"}
    content = readme.read_text()
    assert "old table" not in content and content.startswith("intro\n") and content.endswith("end\n")
    assert text.strip() in content


def test_protocol_ablation_subset_and_budgets(run, env_kwargs, tmp_path):
    text = _protocol(run, env_kwargs, tmp_path, ablation_budgets=(0.2,), ablation_slides=1)
    assert "| ppo | TSU | 20% |" in text and "| ppo | TSU | 10% |" not in text
    assert "1 slides of the split" in text
    data = json.loads((tmp_path / "results" / "results.json").read_text())
    assert all(r["slides"] == 1 for r in data["ablation"].values())
    assert all(r["budget"] == 0.2 for r in data["ablation"]["global update"]["rows"])


def test_cli_evaluate_all_writes_the_policy_card(monkeypatch, tmp_path):
    """``evaluate --all --card`` writes the card from the protocol's main report (it was silently ignored)."""
    import wsigym.agents.benchmark as benchmark
    import wsigym.agents.publish as publish
    from wsigym.cli import main as wsigym_main

    main_report = object()
    calls = {}
    monkeypatch.setattr(
        benchmark, "run_protocol", lambda **kw: benchmark.ProtocolResult("table", main_report, {})
    )
    monkeypatch.setattr(
        publish, "write_card", lambda folder, report, **kw: calls.setdefault("card", (folder, report))
    )
    argv = ["evaluate", "--all", "--policy", "runs/p", "--out", str(tmp_path), "--no-progress"]
    assert wsigym_main([*argv, "--card"]) == 0
    assert calls["card"] == ("runs/p", main_report)
    with pytest.raises(SystemExit, match="--policy"):
        wsigym_main(["evaluate", "--all", "--card", "--out", str(tmp_path)])


def test_sasha_recipe_is_sashas_settings():
    """Each value of ``--recipe sasha`` against SASHA's official code (recipes.py's table cites the files)."""
    from wsigym.agents.recipes import RECIPES, ppo_config

    c = ppo_config("sasha")
    assert (c.tokens, c.warm_start, c.hidden, c.critic_attention) == ("state", False, 128, 128)
    assert (c.optimizer, c.learning_rate, c.weight_decay) == ("adamw", 1e-5, 1e-4)
    assert (c.gamma, c.gae_lambda, c.clip_range, c.ent_coef, c.max_grad_norm) == (1.0, 0.95, 0.2, 0.001, 0.5)
    assert (c.n_envs, c.n_epochs, c.rollout_episodes) == (2, 4, True)
    assert c.normalize_advantage and not c.normalize_reward and not c.select_initial
    assert RECIPES["sasha-sb3"] == {} and ppo_config("sasha-sb3") == PPOConfig()
    assert (c.eval_freq, c.checkpoint_freq) == ("pass", "pass")  # SASHA validates after each pass
    with pytest.raises(ValueError, match="weight_decay needs optimizer='adamw'"):
        PPOConfig(weight_decay=1e-4)
    for bad in (0, "epoch", 2.5):
        with pytest.raises(ValueError, match="eval_freq must be an int >= 1 or 'pass'"):
            PPOConfig(eval_freq=bad)


def test_sasha_recipe_trains_on_whole_episodes(tiny_dataset, models, tmp_path):
    """Whole-episode rollouts (n_steps = longest episode, one full batch), AdamW with weight decay, no
    reward normalisation, and the step-0 policy evaluated but never kept as the best one."""
    from stable_baselines3.common.vec_env import VecNormalize

    from wsigym.agents.recipes import ppo_config
    from wsigym.envs.slide_source import budget_steps

    env_kwargs = _tiny_env_kwargs(tiny_dataset, models)
    config = ppo_config("sasha", env_kwargs=env_kwargs, total_timesteps=1, eval_slides=1)
    model = train_ppo(config, tmp_path, progress=False)
    train_ids = tiny_dataset.splits[0]["train"]
    steps = [budget_steps(tiny_dataset.load(s).features.shape[0], 0.2) for s in train_ids]
    longest = max(steps)
    assert model.n_steps == longest and model.batch_size == 2 * longest and model.n_epochs == 4
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["config"]["n_steps"] == longest and record["timesteps"] == 2 * longest
    # validation and SB3 zips once per pass: 2 episodes of every training slide
    assert (
        record["config"]["eval_freq"] == record["config"]["checkpoint_freq"] == 2 * sum(steps) > 2 * longest
    )
    optimizer = model.policy.optimizer
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 1e-4
    assert optimizer.defaults["lr"] == 1e-5
    assert not isinstance(model.get_env(), VecNormalize)
    history = record["validation"]
    assert [h["timesteps"] for h in history] == [0, 2 * longest]
    best = load_file(str(tmp_path / "best" / POLICY_WEIGHTS))
    last = load_file(str(tmp_path / "last" / POLICY_WEIGHTS))
    assert all(torch.equal(best[k], last[k]) for k in last)  # only the post-update evaluation can be best


def test_a_model_without_tensorboard_log_leaves_no_folder(tiny_dataset, models, tmp_path, monkeypatch):
    """SB3's default logger makes ``<tempdir>/SB3-<date>`` at every learn(); make_model's does not."""
    import tempfile

    from wsigym.agents.ppo import _split_env, make_model

    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = _tiny_config(_tiny_env_kwargs(tiny_dataset, models), total_timesteps=32)
    model = make_model(config, _split_env(config, "train", config.n_envs, config.seed, False))
    model.learn(32)
    assert model.num_timesteps >= 32
    assert list(tmp_path.glob("SB3-*")) == []
