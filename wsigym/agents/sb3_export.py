r"""SB3-native files for a policy folder, as rl-zoo3 / ``huggingface_sb3`` users expect them.

From a folder written by :func:`wsigym.agents.policy_writer.save_policy` (``policy.safetensors`` +
``policy.json``), :func:`export_sb3` writes next to them:

- ``ppo-<env>.zip``: a **slim** ``MaskablePPO`` zip (``MaskablePPO.save``) holding the policy
  weights and a never-stepped optimiser (no Adam moments), so it weighs about as much as
  ``policy.safetensors``. ``MaskablePPO.load`` and ``huggingface_sb3.load_from_hub`` accept it. It is
  an inference model: its rollout settings are ``n_steps = batch_size = 2`` for one environment,
  so loading allocates no large rollout buffer (on synth-c16 one observation is 6.5 MB); the
  training settings are in ``config.yml``, and ``MaskablePPO.load(path, env=..., custom_objects=
  {"n_steps": ..., "batch_size": ...})`` restores them to fine-tune. SB3 zips unpickle: trusted
  repositories only (``load_policy`` reads the safetensors without pickle).
- ``config.yml``: rl-zoo3's hyper-parameter file (an ``OrderedDict`` of the training settings, as
  ``rl_zoo3`` writes it) and ``env_kwargs.yml``: the environment arguments, with ``max_patches``.
- ``replay.gif``: rendered frames (``render_mode="rgb_array"``) of one greedy, masked episode.
- ``sb3.json``: ``mean_reward`` / ``std_reward`` of ``n_eval_episodes`` greedy masked episodes of
  the zip itself (``sb3_contrib``'s ``evaluate_policy``, as rl-zoo3 reports), on ``split`` with the
  training environment arguments; :func:`wsigym.agents.publish.write_card` puts it in the card's
  ``model-index``.

Run ``wsigym sb3-export zoo/assets/weights/ppo-WSIZoom-v0`` to regenerate the shipped policy's files.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from PIL import Image

from wsigym.io import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text

SB3_SUMMARY = "sb3.json"
REPLAY_NAME = "replay.gif"
#: rl-zoo3 ``config.yml`` keys taken from ``policy.json["ppo"]`` (PPOConfig names -> SB3 names).
ZOO_KEYS = {
    "n_envs": "n_envs",
    "n_steps": "n_steps",
    "batch_size": "batch_size",
    "n_epochs": "n_epochs",
    "learning_rate": "learning_rate",
    "gamma": "gamma",
    "gae_lambda": "gae_lambda",
    "clip_range": "clip_range",
    "ent_coef": "ent_coef",
    "vf_coef": "vf_coef",
    "max_grad_norm": "max_grad_norm",
    "normalize_advantage": "normalize_advantage",
    "total_timesteps": "n_timesteps",
}


def repo_name(algo: str, env_id: str) -> str:
    """huggingface_sb3's scheme: ``{algo}-{env}`` with ``/`` -> ``-`` and a ``module:`` prefix dropped."""
    env = env_id.split(":")[-1].replace("/", "-")
    return f"{algo.lower()}-{env}"


class SpacesOnlyEnv(gym.Env):
    """An environment that only has spaces: what SB3 needs to build a model without data."""

    def __init__(self, observation_space: gym.spaces.Space, action_space: gym.spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        raise RuntimeError("SpacesOnlyEnv has no data: pass a WSIZoom environment to the model")

    def step(self, action: Any) -> Any:
        raise RuntimeError("SpacesOnlyEnv has no data: pass a WSIZoom environment to the model")


def zip_name(config: dict[str, Any]) -> str:
    """``ppo-<env>.zip`` (huggingface_sb3's ``{algo}-{env}`` scheme)."""
    return repo_name("ppo", str(config.get("env_id", "WSIZoom-v0"))) + ".zip"


def sb3_model(folder: str | Path, device: str = "cpu") -> Any:
    """A ``MaskablePPO`` with the folder's :class:`~wsigym.agents.policy.PatchPolicy` weights.

    The weights are loaded without pickle (:func:`~wsigym.agents.saved_policy.load_policy`); the optimiser is
    fresh (never stepped) and the rollout settings are the slim ones of the module docstring.
    """
    from sb3_contrib import MaskablePPO

    from wsigym.agents.policy import PatchPolicy
    from wsigym.agents.saved_policy import load_policy

    agent = load_policy(folder, device=device)
    config, policy = agent.config, agent.policy
    ppo = config.get("ppo", {})
    model = MaskablePPO(
        PatchPolicy,
        SpacesOnlyEnv(policy.observation_space, policy.action_space),
        n_steps=2,
        batch_size=2,
        n_epochs=int(ppo.get("n_epochs", 1)),
        learning_rate=float(ppo.get("learning_rate", 3e-4)),
        gamma=float(ppo.get("gamma", 0.99)),
        gae_lambda=float(ppo.get("gae_lambda", 0.95)),
        clip_range=float(ppo.get("clip_range", 0.2)),
        ent_coef=float(ppo.get("ent_coef", 0.0)),
        vf_coef=float(ppo.get("vf_coef", 0.5)),
        max_grad_norm=float(ppo.get("max_grad_norm", 0.5)),
        policy_kwargs={
            "hidden": int(config["hidden"]),
            "critic_hidden": int(config["critic_hidden"]),
            "critic_attention": int(config["critic_attention"]),
            "standardise": bool(config.get("standardise", False)),
            "tokens": str(config.get("tokens", "state+context")),
        },
        seed=int(ppo.get("seed", 0)),
        device=device,
        verbose=0,
    )
    model.policy.load_state_dict(policy.state_dict(), strict=True)
    model.policy.set_training_mode(False)
    return model


def write_zip(folder: str | Path) -> Path:
    """Write the slim ``ppo-<env>.zip`` of a policy folder (module docstring); returns its path."""
    from wsigym.agents.saved_policy import POLICY_CONFIG

    folder = Path(folder)
    config = json.loads((folder / POLICY_CONFIG).read_text())
    model = sb3_model(folder)
    path = folder / zip_name(config)

    buffer = io.BytesIO()
    model.save(buffer)
    return atomic_write_bytes(path, deflated_zip(buffer.getvalue()))


def deflated_zip(data: bytes) -> bytes:
    """The zip archive ``data`` with every member deflated.

    SB3 stores its members uncompressed; the pickled observation space holds the ``Box`` bounds of
    the ``P*d`` state (13 MB of one repeated float on synth-c16), which deflate shrinks to kilobytes.
    ``zipfile`` (and so ``MaskablePPO.load``) reads both forms.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info, content in members:
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, content)
    return out.getvalue()


def env_kwargs_for(config: dict[str, Any]) -> dict[str, Any]:
    """The training environment's arguments from ``policy.json`` (JSON-safe ones, not ``progress`` or
    ``device``), with ``max_patches``."""
    kwargs = {
        k: v
        for k, v in config.get("ppo", {}).get("env_kwargs", {}).items()
        if not (isinstance(v, str) and v.startswith("<"))  # model instances were recorded as "<Type>"
        and k not in ("progress", "device")  # where it ran, not what it is
    }
    kwargs["max_patches"] = int(config["num_patches"])
    return kwargs


def zoo_config(config: dict[str, Any]) -> OrderedDict:
    """rl-zoo3's ``config.yml`` content: sorted hyper-parameters, ``policy_kwargs`` as a string."""
    ppo = config.get("ppo", {})
    params: dict[str, Any] = {ZOO_KEYS[k]: ppo[k] for k in ZOO_KEYS if k in ppo}
    params["policy"] = "wsigym.agents.policy.PatchPolicy"
    params["policy_kwargs"] = (
        f"dict(hidden={int(config['hidden'])}, critic_hidden={int(config['critic_hidden'])}, "
        f"critic_attention={int(config['critic_attention'])}, standardise={bool(config.get('standardise'))}, "
        f"tokens={str(config.get('tokens', 'state+context'))!r})"
    )
    return OrderedDict((k, params[k]) for k in sorted(params))


def replay_frames(model: Any, env: gym.Env, seed: int = 0, max_frames: int = 24) -> list[np.ndarray]:
    """``rgb_array`` frames of one greedy masked episode (the first, the last, evenly spaced between)."""
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    done = False
    while not done:
        action, _ = model.predict(obs, deterministic=True, action_masks=env.unwrapped.action_masks())
        obs, _, terminated, truncated, _ = env.step(int(np.asarray(action).reshape(())))
        frames.append(env.render())
        done = terminated or truncated
    keep = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    return [frames[i] for i in keep]


def export_sb3(
    folder: str | Path,
    *,
    split: str = "test",
    n_eval_episodes: int = 10,
    seed: int = 0,
    replay: bool = True,
    env_overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the SB3-native files of a policy folder (module docstring); returns ``sb3.json``'s content.

    Args:
        folder: a policy folder (``policy.json`` + ``policy.safetensors``).
        split: split of the evaluation and replay episodes.
        n_eval_episodes: episodes of ``mean_reward`` (rl-zoo3's default 10), seeded from ``seed``.
        replay: also write ``replay.gif``.
        env_overrides: environment arguments that replace the recorded ones (e.g. ``dataset``,
            ``hafed``, ``tsu`` for a policy trained on in-memory data).

    Raises:
        ValueError: the folder is not a policy folder.
    """
    from sb3_contrib.common.maskable.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    import wsigym  # noqa: F401  (registers the environments)
    from wsigym.agents.saved_policy import POLICY_CONFIG

    folder = Path(folder)
    if not (folder / POLICY_CONFIG).is_file():
        raise ValueError(f"{folder}: not a policy folder ({POLICY_CONFIG} missing)")
    config = json.loads((folder / POLICY_CONFIG).read_text())
    name = write_zip(folder).name
    model = sb3_model(folder)

    env_kwargs = env_kwargs_for(config)
    atomic_write_text(folder / "env_kwargs.yml", yaml.safe_dump(env_kwargs, sort_keys=True))
    atomic_write_text(folder / "config.yml", yaml.dump(zoo_config(config)))

    env_id = str(config.get("env_id", "WSIZoom-v0"))
    make_kwargs = {**env_kwargs, "split": split, "progress": progress, **(env_overrides or {})}
    env = Monitor(gym.make(env_id, **make_kwargs))
    env.reset(seed=seed)
    rewards, lengths = evaluate_policy(
        model, env, n_eval_episodes=n_eval_episodes, deterministic=True, return_episode_rewards=True
    )
    env.close()
    summary = {
        "mean_reward": float(np.mean(rewards)),
        "std_reward": float(np.std(rewards)),
        "n_eval_episodes": int(n_eval_episodes),
        "mean_episode_length": float(np.mean(lengths)),
        "is_deterministic": True,
        "split": split,
        "seed": int(seed),
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "zip": name,
    }
    if replay:
        env = gym.make(env_id, **make_kwargs, render_mode="rgb_array")
        frames = [Image.fromarray(f) for f in replay_frames(model, env, seed=seed)]
        env.close()
        atomic_write(
            folder / REPLAY_NAME,
            lambda tmp: frames[0].save(
                tmp, format="GIF", save_all=True, append_images=frames[1:], duration=400, loop=0
            ),
        )
        summary["replay"] = REPLAY_NAME
    atomic_write_json(folder / SB3_SUMMARY, summary)
    return summary
