"""A PPO run stopped after a few updates and resumed ends where an uninterrupted one does, with one log."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3.common.callbacks import BaseCallback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from wsigym.agents.ppo import train_ppo
from wsigym.agents.recipes import PPOConfig
from wsigym.agents.resume import ExportCheckpoints, export_run, import_run, latest_checkpoint, restore
from wsigym.cli import build_parser, main
from wsigym.errors import DataError

ROLLOUT = 2 * 8  # n_envs x n_steps


class Killed(Exception):
    """Stands for the process being killed."""


class KillDuringRollout(BaseCallback):
    """Raise in the middle of the rollout that follows ``updates`` updates (nothing after it runs)."""

    def __init__(self, updates: int) -> None:
        super().__init__(verbose=0)
        self.at = updates * ROLLOUT + ROLLOUT // 2

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.at:
            raise Killed
        return True


def _config(env_kwargs, **overrides) -> PPOConfig:
    settings = {
        "env_kwargs": env_kwargs,
        "total_timesteps": 5 * ROLLOUT,
        "n_envs": 2,
        "n_steps": 8,
        "batch_size": 16,
        "n_epochs": 2,
        "eval_freq": 2 * ROLLOUT,
        "eval_slides": 1,
        "checkpoint_updates": 2,
        "checkpoint_freq": 10**6,
        "normalize_reward": True,
    }
    return PPOConfig(**{**settings, **overrides})


def _steps(run) -> tuple[list[str], set[int]]:
    """TensorBoard run folders under ``run/tb`` and every scalar step they hold."""
    folders = sorted(p.name for p in (run / "tb").iterdir())
    steps: set[int] = set()
    for folder in folders:
        acc = EventAccumulator(str(run / "tb" / folder))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps |= {e.step for e in acc.Scalars(tag)}
    return folders, steps


def test_stopped_run_resumes_to_the_same_total(env_kwargs, tmp_path):
    config = _config(env_kwargs)
    whole = train_ppo(config, tmp_path / "whole", progress=False)

    run = tmp_path / "run"
    with pytest.raises(Killed):
        train_ppo(config, run, progress=False, callbacks=[KillDuringRollout(updates=3)])
    checkpoint = latest_checkpoint(run)
    assert checkpoint.name == "update-0000002"  # every 2 updates; the 3rd update's checkpoint is not due
    saved = json.loads((checkpoint / "state.json").read_text())
    assert saved["num_timesteps"] == 2 * ROLLOUT and saved["updates"] == 2
    assert not (run / "train.json").exists()  # the killed run wrote no final files

    resumed = train_ppo(config, run, progress=False, resume=True)
    assert resumed.num_timesteps == whole.num_timesteps == config.total_timesteps
    assert resumed._n_updates == 3 * config.n_epochs  # only the 3 updates after the checkpoint were run
    record, reference = (json.loads((d / "train.json").read_text()) for d in (run, tmp_path / "whole"))
    assert record["timesteps"] == reference["timesteps"] == 5 * ROLLOUT
    # the progress log continues: the same evaluation schedule, no step evaluated twice
    assert [h["timesteps"] for h in record["validation"]] == [h["timesteps"] for h in reference["validation"]]
    assert [h["timesteps"] for h in record["validation"]] == [0, 32, 64, 80]
    # TensorBoard: one run folder, continuing at the resumed timestep, covering the same steps
    (folders, steps), (_, whole_steps) = _steps(run), _steps(tmp_path / "whole")
    assert folders == ["ppo_1"] and steps == whole_steps
    assert latest_checkpoint(run).name == "update-0000005"  # and the last update is checkpointed
    assert len([p for p in (run / "resume").iterdir() if p.is_dir()]) == 1


def test_an_exported_run_continues_on_another_machine(env_kwargs, tmp_path):
    """A run killed on one machine continues from its exported copy in another folder as it would in place."""
    config = _config(env_kwargs)
    run, copy = tmp_path / "machine-1" / "run", tmp_path / "record" / "unfinished"
    assert export_run(run, copy) is None and not copy.exists()  # nothing to export before a checkpoint
    with pytest.raises(Killed):
        train_ppo(
            config,
            run,
            progress=False,
            callbacks=[ExportCheckpoints(run, copy), KillDuringRollout(updates=3)],
        )
    assert latest_checkpoint(copy).name == "update-0000002"  # exported after the checkpoint was written
    assert sorted(p.name for p in copy.iterdir()) == ["best", "eval", "resume", "tb"]

    elsewhere = tmp_path / "machine-2" / "run"
    import_run(copy, elsewhere)
    moved = train_ppo(config, elsewhere, progress=False, resume=True)
    in_place = train_ppo(config, run, progress=False, resume=True)
    for name in ("policy.safetensors", "best/policy.safetensors"):
        a, b = (load_file(str(d / name)) for d in (elsewhere, run))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert moved.num_timesteps == in_place.num_timesteps == config.total_timesteps
    assert _steps(elsewhere) == _steps(run)  # one TensorBoard run, continued
    with pytest.raises(DataError, match="no resumable checkpoint"):
        import_run(tmp_path / "nothing", tmp_path / "machine-3")
    assert not (tmp_path / "machine-3").exists()


def test_restore_puts_back_policy_optimizer_counters_and_rngs(env_kwargs, tmp_path):
    config = _config(env_kwargs, total_timesteps=2 * ROLLOUT)
    model = train_ppo(config, tmp_path, progress=False)
    opt = model.policy.optimizer.state_dict()
    torch.manual_seed(123)  # disturb the global RNG: restore must bring back the saved one
    fresh_model, updates = _fresh_restore(config, tmp_path)
    assert updates == 2 and fresh_model.num_timesteps == 2 * ROLLOUT
    last = load_file(str(tmp_path / "last" / "policy.safetensors"))  # the model itself now holds the best
    for k, v in fresh_model.policy.state_dict().items():
        assert torch.equal(v, last[k]), k
    new = fresh_model.policy.optimizer.state_dict()
    assert new["param_groups"] == opt["param_groups"]
    for i, values in opt["state"].items():
        for key, value in values.items():
            assert torch.equal(new["state"][i][key], value), (i, key)
    saved_rng = load_file(str(latest_checkpoint(tmp_path) / "rng.safetensors"))["torch"]
    assert torch.equal(torch.get_rng_state(), saved_rng)

    other = _config(env_kwargs, total_timesteps=2 * ROLLOUT, learning_rate=3e-4)
    with pytest.raises(DataError, match="learning_rate"):
        _fresh_restore(other, tmp_path)
    with pytest.raises(DataError, match="no resumable checkpoint"):
        latest_checkpoint(tmp_path / "nothing")


def _fresh_restore(config, run):
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from wsigym.agents.ppo import ValidationCallback, _split_env, make_model

    venv = _split_env(config, "train", config.n_envs, config.seed, False)
    env = VecNormalize(VecMonitor(venv), norm_obs=False, norm_reward=True, gamma=config.gamma)
    model = make_model(config, env)
    validation = ValidationCallback(None, [], config.eval_freq, run / "best", run / "eval", config)
    return model, restore(model, validation, env, config, run)


def test_cli_resume_refuses_a_python_only_run(env_kwargs, tmp_path, capsys):
    train_ppo(_config(env_kwargs, total_timesteps=2 * ROLLOUT), tmp_path, progress=False)
    assert main(["train", "ppo", "--resume", str(tmp_path), "--no-progress"]) == 2
    assert "train_ppo(config, run_dir, resume=True)" in capsys.readouterr().err
    assert main(["train", "ppo", "--resume", str(tmp_path / "none")]) == 2
    assert "no resumable checkpoint" in capsys.readouterr().err
    args = build_parser().parse_args(
        ["train", "ppo", "--resume", str(tmp_path), "--out", str(tmp_path / "x")]
    )
    with pytest.raises(ValueError, match="leave out --out"):
        args.func(args)
