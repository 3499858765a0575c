"""Train the zoom policy with sb3-contrib's ``MaskablePPO`` and :class:`~wsigym.agents.policy.PatchPolicy`.

SASHA's PPO settings (``sasha.md`` §5) mapped onto SB3:

==============================  ==================================  ======================================
SASHA (custom loop)             here (SB3 / sb3-contrib)            note
==============================  ==================================  ======================================
gamma 1.0, GAE lambda 0.95      ``gamma=1.0, gae_lambda=0.95``      same
clip 0.2                        ``clip_range=0.2``                  same (C16 after PR #5)
entropy 0.001                   ``ent_coef=0.001``                  same sign convention as the fixed code
4 epochs per rollout            ``n_epochs=4``                      same
full-batch update               ``batch_size`` = rollout size       default; set smaller to save memory
grad-norm clip 0.5              ``max_grad_norm=0.5``               same
two AdamW, lr 1e-5              one Adam, ``learning_rate=1e-4``    one optimiser for actor and critic;
                                                                    larger lr for short CPU runs
2 episodes per slide in turn    ``n_envs`` slides in parallel       vectorised; random slide per reset
critic target A + V_old         SB3's GAE returns                   same as the fixed code
masks only in rollout           masks in rollout *and* update       fixes SASHA pitfall 1
==============================  ==================================  ======================================

The actor can be warm-started from HAFED's level-2 attention (``warm_start=True``, default), so
training starts from the attention-top-k policy.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from safetensors.torch import load_file, save_file
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.policy import PatchPolicy, warm_start_from_hafed


@dataclass
class PPOConfig:
    """Hyperparameters of :func:`train_ppo` (see the module docstring for the SASHA mapping)."""

    env_id: str = "WSIZoom-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    total_timesteps: int = 20_000
    n_envs: int = 8
    n_steps: int = 64
    batch_size: int = 128
    n_epochs: int = 4
    learning_rate: float = 1e-4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.001
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 128
    critic_hidden: int = 64
    warm_start: bool = True
    eval_freq: int = 2_000
    eval_episodes: int = 10
    checkpoint_freq: int = 10_000
    seed: int = 0
    device: str = "cpu"


def make_model(config: PPOConfig, env: Any, tensorboard_log: str | None = None) -> MaskablePPO:
    """Build a MaskablePPO with the per-patch policy for ``env`` (a VecEnv)."""
    model = MaskablePPO(
        PatchPolicy,
        env,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        policy_kwargs={"hidden": config.hidden, "critic_hidden": config.critic_hidden},
        tensorboard_log=tensorboard_log,
        seed=config.seed,
        device=config.device,
        verbose=0,
    )
    if config.warm_start:
        hafed = env.get_attr("hafed")[0] if hasattr(env, "get_attr") else env.hafed
        warm_start_from_hafed(model.policy, hafed)
    return model


def train_ppo(config: PPOConfig, out_dir: str | Path, *, progress: bool = True) -> MaskablePPO:
    """Train a policy; logs to TensorBoard under ``out_dir/tb``, checkpoints and best model under ``out_dir``.

    Returns the trained model; the final policy is also saved with :func:`save_policy` to ``out_dir/policy``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_kwargs = {"split": "train", **config.env_kwargs}
    val_kwargs = {**train_kwargs, "split": "val"}
    venv = make_vec_env(config.env_id, n_envs=config.n_envs, seed=config.seed, env_kwargs=train_kwargs)
    eval_env = make_vec_env(config.env_id, n_envs=1, seed=config.seed + 10_000, env_kwargs=val_kwargs)
    model = make_model(config, venv, tensorboard_log=str(out_dir / "tb"))
    callbacks = CallbackList(
        [
            MaskableEvalCallback(
                eval_env,
                n_eval_episodes=config.eval_episodes,
                eval_freq=max(1, config.eval_freq // config.n_envs),
                best_model_save_path=str(out_dir / "best"),
                log_path=str(out_dir / "eval"),
                deterministic=True,
                use_masking=True,
                verbose=0,
            ),
            CheckpointCallback(max(1, config.checkpoint_freq // config.n_envs), str(out_dir / "checkpoints")),
        ]
    )
    model.learn(config.total_timesteps, callback=callbacks, progress_bar=progress, tb_log_name="ppo")
    save_policy(model, out_dir / "policy", config)
    venv.close()
    eval_env.close()
    return model


# --- save / load without pickle -------------------------------------------------------------------


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def save_policy(model: MaskablePPO, directory: str | Path, config: PPOConfig) -> Path:
    """Write ``policy.safetensors`` + ``config.json`` (no pickle), plus SB3's own zip for SB3 tooling.

    Our loader (:func:`load_policy`) reads only the safetensors and JSON files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, directory / "policy.safetensors")
    space = model.observation_space
    _atomic_json(
        directory / "config.json",
        {
            "algorithm": "MaskablePPO",
            "policy": "wsigym.agents.policy.PatchPolicy",
            "num_patches": int(space["patch_mask"].shape[0]),
            "state_shape": list(space["state"].shape),
            "ppo": asdict(config),
        },
    )
    model.save(directory / f"ppo-{config.env_id}.zip")
    return directory


class PolicyAgent:
    """A loaded policy as an agent: ``agent(obs, info) -> action`` (greedy over legal patches)."""

    def __init__(self, policy: PatchPolicy, config: dict[str, Any]) -> None:
        self.policy = policy.eval()
        self.config = config

    def __call__(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> int:
        action, _ = self.policy.predict(
            obs, deterministic=True, action_masks=np.asarray(obs["action_mask"]).astype(bool)
        )
        return int(np.asarray(action).reshape(-1)[0])


def load_policy(directory: str | Path, env: gym.Env, device: str = "cpu") -> PolicyAgent:
    """Rebuild a :class:`PatchPolicy` for ``env``'s spaces and load its weights strictly.

    Raises:
        ValueError: naming the file, when the config does not fit ``env`` or tensors are missing/unexpected.
    """
    directory = Path(directory)
    cfg_path, weights_path = directory / "config.json", directory / "policy.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise ValueError(f"{p}: missing (expected a policy saved by wsigym.agents.ppo.save_policy)")
    config = json.loads(cfg_path.read_text())
    space = env.observation_space
    if int(space["patch_mask"].shape[0]) != config["num_patches"]:
        raise ValueError(
            f"{cfg_path}: policy was trained for {config['num_patches']} patches, the env pads to "
            f"{space['patch_mask'].shape[0]}; make the env with max_patches={config['num_patches']}"
        )
    ppo = config["ppo"]
    policy = PatchPolicy(
        space, env.action_space, lambda _: 0.0, hidden=ppo["hidden"], critic_hidden=ppo["critic_hidden"]
    ).to(device)
    try:
        state = load_file(str(weights_path), device=device)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights_path}: not a readable safetensors file ({e})") from None
    result = policy.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{weights_path}: missing tensors {result.missing_keys}, unexpected tensors {result.unexpected_keys}"
        )
    return PolicyAgent(policy, config)
