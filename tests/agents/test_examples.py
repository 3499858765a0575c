"""The runnable examples of docs/using-wsigym-with.md, each for a few steps on the tiny dataset."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn"])
def test_sb3_plain(env_kwargs, algo):
    model = _example("sb3_plain").run(algo, env_kwargs, timesteps=128)
    assert model.num_timesteps >= 128


@pytest.mark.parametrize("policy", ["patch", "mlp"])
def test_sb3_masked(env_kwargs, policy, capsys):
    model = _example("sb3_masked").run(policy, env_kwargs, timesteps=64)
    assert model.num_timesteps >= 64
    shown = re.search(r"greedy episode on (\S+):", capsys.readouterr().out)
    assert shown and shown.group(1) in env_kwargs["dataset"].slide_ids()


def test_cleanrl_ppo(env_kwargs):
    out = _example("cleanrl_ppo").run(
        {**env_kwargs, "budget": 0.05}, total_timesteps=128, num_envs=4, num_steps=16
    )
    assert out["episodes"] > 0 and math.isfinite(out["mean_return"])


def test_docs_page_names_every_example():
    page = (EXAMPLES.parent / "docs" / "using-wsigym-with.md").read_text()
    for name in ("sb3_plain.py", "sb3_masked.py", "cleanrl_ppo.py"):
        assert f"examples/{name}" in page
