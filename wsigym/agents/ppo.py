"""Train the zoom policy with sb3-contrib's ``MaskablePPO`` and :class:`~wsigym.agents.policy.PatchPolicy`.

The settings (:class:`~wsigym.agents.recipes.PPOConfig`, the named recipes and how they map SASHA's PPO onto
SB3) are in :mod:`wsigym.agents.recipes`; the saved policy (loader and greedy runner) in
:mod:`wsigym.agents.saved_policy`.

The actor can be warm-started from HAFED's level-2 attention (``warm_start=True``, default), so
training starts from "zoom where HAFED attends in the current state"; its score layer is then
rescaled so the logits of the first observations have std ``warm_start_logit_std`` (a softmax
temperature: HAFED's logits are nearly flat over a thousand patches, and sampling from them would be
almost uniform, entropy ~ log N). The greedy policy is unchanged by the rescaling.

**Paths and memory.** ``path="segments"`` (default) trains with
:class:`~wsigym.agents.segment_ppo.SegmentMaskablePPO`: episodes are stored as their slide plus the rows
that changed and the policy is evaluated once per row version (same loss; minibatches are whole
segments of episodes), so memory grows with the real rows. ``path="plain"`` is ``MaskablePPO`` on SB3's
rollout buffer of ``n_steps * n_envs`` padded observations: on synth-c16 (``P = 4219``, ``d = 384``) one
observation is 6.5 MB and a rollout of 4 x 32 = 128 observations about 0.83 GB
(:func:`rollout_buffer_bytes`). ``tokens="state"`` gives the policy SASHA's state-only tokens, whose
scores depend on a row's version alone: the structured path is then much faster (README, "PPO training
throughput").

**Saving.** :func:`~wsigym.agents.policy_writer.save_policy` writes ``policy.safetensors`` + ``policy.json`` (loaded by
:func:`~wsigym.agents.saved_policy.load_policy` without pickle) and SB3's own zip for SB3 tooling (pickle: trusted use only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.policy import PatchPolicy, scale_actor_logits, warm_start_from_hafed
from wsigym.agents.policy_writer import save_policy
from wsigym.agents.recipes import PPOConfig, json_safe_kwargs
from wsigym.agents.resume import ResumeCheckpoint, restore
from wsigym.agents.saved_policy import POLICY_WEIGHTS, PolicyAgent
from wsigym.agents.sb3_vec import make_sb3_vec_env
from wsigym.agents.schedule import PER_PASS, pass_timesteps
from wsigym.agents.segment_ppo import SegmentMaskablePPO, vector_env_of
from wsigym.io import atomic_write_json


def rollout_buffer_bytes(num_patches: int, dim: int, n_steps: int, n_envs: int) -> int:
    """Bytes of SB3's rollout buffer observations (float32): ``n_steps * n_envs * P * (d + 8) * 4`` + masks."""
    per_obs = num_patches * (dim + 2 + 4) + 1  # state, coords, 4 binary keys, budget
    return int(n_steps * n_envs * (per_obs + num_patches) * 4)  # + the action masks


def optimizer_kwargs(config: PPOConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for ``config.optimizer``: none for SB3's Adam, AdamW with ``weight_decay``."""
    if config.optimizer == "adamw":
        return {
            "optimizer_class": torch.optim.AdamW,
            "optimizer_kwargs": {"weight_decay": config.weight_decay},
        }
    return {}


def episode_lengths(venv: Any) -> list[int]:
    """Zooms per episode of each of ``venv``'s slides at its budget, ``ceil(budget * N)``."""
    from wsigym.envs.slide_source import budget_steps

    engine = vector_env_of(venv).batch
    return [budget_steps(int(n), engine.config.budget) for n in engine.source.n_list]


def episode_rollout(config: PPOConfig, venv: Any) -> PPOConfig:
    """``config`` with ``n_steps`` = the longest episode of ``venv``'s slides at its budget and
    ``batch_size = n_envs * n_steps`` when ``config.rollout_episodes`` (else ``config`` unchanged)."""
    if not config.rollout_episodes:
        return config
    longest = max(episode_lengths(venv))
    return replace(config, n_steps=longest, batch_size=config.n_envs * longest)


def pass_frequencies(config: PPOConfig, venv: Any) -> PPOConfig:
    """``config`` with each :data:`~wsigym.agents.schedule.PER_PASS` frequency (``eval_freq``,
    ``checkpoint_freq``) replaced by the timesteps of one pass over ``venv``'s slides
    (:func:`~wsigym.agents.schedule.pass_timesteps` at the env's budget)."""
    names = [name for name in ("eval_freq", "checkpoint_freq") if getattr(config, name) == PER_PASS]
    if not names:
        return config
    per_pass = pass_timesteps(episode_lengths(venv))
    return replace(config, **{name: per_pass for name in names})


def make_model(config: PPOConfig, env: Any, tensorboard_log: str | None = None) -> MaskablePPO:
    """Build a MaskablePPO with the per-patch policy for ``env`` (an SB3 VecEnv), warm-started if asked.

    Without ``tensorboard_log`` the model logs nowhere: SB3 would otherwise make an empty
    ``<tempdir>/SB3-<date>`` folder at every ``learn()`` (``stable_baselines3.common.logger.configure``).
    """
    hafed = env.get_attr("hafed")[0]
    hidden = config.hidden if config.hidden is not None else int(hafed.config.attn_dim)
    algorithm = SegmentMaskablePPO if config.path == "segments" else MaskablePPO
    model = algorithm(
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
        normalize_advantage=config.normalize_advantage,
        policy_kwargs={
            "hidden": hidden,
            "critic_hidden": config.critic_hidden,
            "critic_attention": config.critic_attention,
            "standardise": config.standardise,
            "tokens": config.tokens,
            **optimizer_kwargs(config),
        },
        tensorboard_log=tensorboard_log,
        seed=config.seed,
        device=config.device,
        verbose=0,
    )
    if tensorboard_log is None:
        model.set_logger(Logger(folder=None, output_formats=[]))
    if config.warm_start:
        warm_start_from_hafed(model.policy, hafed)
        if config.warm_start_logit_std:
            obs, _ = model.policy.obs_to_tensor(env.reset())
            scale = scale_actor_logits(model.policy, obs, config.warm_start_logit_std)
            model.warm_start_scale = scale
    return model


class ValidationCallback(BaseCallback):
    """Every ``eval_freq`` timesteps: the greedy, masked policy on the validation slides (the protocol).

    Logs ``val/accuracy``, ``val/auc``, ``val/f1``, ``val/ece``, ``val/nll`` and ``val/criterion`` =
    ``(2 - AUC - F1) + NLL`` (SASHA's model selection) to TensorBoard, appends them to
    ``log_path/evaluations.json`` and saves the best policy (lowest criterion) to ``best_path``.
    """

    def __init__(
        self,
        env: Any,
        slide_ids: list[str],
        eval_freq: int,
        best_path: Path,
        log_path: Path,
        config: PPOConfig,
        progress: bool = False,
    ) -> None:
        super().__init__(verbose=0)
        self.env, self.slide_ids, self.eval_freq = env, slide_ids, max(1, int(eval_freq))
        self.best_path, self.log_path, self.ppo_config = Path(best_path), Path(log_path), config
        self.progress = progress
        self.history: list[dict[str, float]] = []
        self.best = math.inf
        self.next_eval = 0
        self._start = time.perf_counter()

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        if self.num_timesteps == 0:  # the initial policy (a resumed run continues its schedule)
            self._evaluate()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            self._evaluate()
        return True

    def _on_training_end(self) -> None:
        if not self.history or self.history[-1]["timesteps"] != self.num_timesteps:
            self._evaluate()

    def _evaluate(self) -> None:
        from wsigym.evaluate import run_split

        self.next_eval = self.num_timesteps + self.eval_freq
        was_training = self.model.policy.training
        agent = PolicyAgent(self.model.policy)
        t0 = time.perf_counter()
        metrics = run_split(agent, self.env, self.slide_ids, seed=0, progress=self.progress, desc="val")
        self.model.policy.train(was_training)
        auc = metrics["auc"] if math.isfinite(metrics["auc"]) else 0.5
        metrics["criterion"] = (2.0 - auc - metrics["f1"]) + metrics["nll"]
        row = {
            "timesteps": int(self.num_timesteps),
            "wall_seconds": time.perf_counter() - self._start,
            "eval_seconds": time.perf_counter() - t0,
            **{k: float(v) for k, v in metrics.items()},
        }
        self.history.append(row)
        for key in (
            "accuracy",
            "auc",
            "f1",
            "ece",
            "nll",
            "criterion",
            "zooms",
            "tumour_hits",
            "tumour_reached",
        ):
            if math.isfinite(row.get(key, math.nan)):
                self.logger.record(f"val/{key}", row[key])
        self.log_path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.log_path / "evaluations.json", {"history": self.history})
        if row["criterion"] < self.best and (self.num_timesteps > 0 or self.ppo_config.select_initial):
            self.best = row["criterion"]
            save_policy(self.model, self.best_path, self.ppo_config, sb3_zip=False)


def _split_env(config: PPOConfig, split: str, n_envs: int, seed: int, progress: bool) -> Any:
    kwargs = {"progress": progress, **config.env_kwargs, "split": split}
    return make_sb3_vec_env(config.env_id, n_envs=n_envs, seed=seed, **kwargs)


def train_ppo(
    config: PPOConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    callbacks: Sequence[BaseCallback] = (),
) -> MaskablePPO:
    """Train a policy with MaskablePPO on ``config.env_id`` (train split), validating on the val split.

    Writes under ``out_dir``: ``tb/`` (TensorBoard), ``checkpoints/`` (SB3 zips), ``eval/evaluations.json``
    (validation history), ``best/`` (best validation policy), ``last/`` (the policy after the last
    update), the kept policy in ``out_dir`` itself (``config.keep``: ``"best"`` validation criterion,
    the warm start included, or ``"last"``; :func:`save_policy`, with an SB3 zip of the same weights:
    the folder is what :mod:`wsigym.agents.publish` pushes) and ``train.json`` (config, wall time,
    rollout memory, validation history) and ``resume/`` (the latest resumable checkpoint, every
    ``config.checkpoint_updates`` updates; :mod:`wsigym.agents.resume`). With ``resume=True`` the run
    continues from ``out_dir``'s latest checkpoint to ``config.total_timesteps`` (the same
    configuration is required; only ``total_timesteps`` may change). ``callbacks`` are added to SB3's.
    SB3's progress bar is shown with ``progress=True``.
    """
    import gymnasium as gym

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    venv = _split_env(config, "train", config.n_envs, config.seed, progress)
    train_env: Any = VecMonitor(venv)
    if config.normalize_reward:
        train_env = VecNormalize(train_env, norm_obs=False, norm_reward=True, gamma=config.gamma)
    # the validation agent (PolicyAgent) keeps its own copy of what it needs: no observation copies
    val_kwargs = {"progress": progress, "copy_obs": False, **config.env_kwargs, "split": "val"}
    val_env = gym.make(config.env_id, disable_env_checker=True, **val_kwargs)
    val_ids = (
        val_env.unwrapped.slide_ids[: config.eval_slides]
        if config.eval_slides
        else val_env.unwrapped.slide_ids
    )
    config = pass_frequencies(episode_rollout(config, venv), venv)
    model = make_model(config, train_env, tensorboard_log=str(out_dir / "tb"))
    validation = ValidationCallback(
        val_env, val_ids, config.eval_freq, out_dir / "best", out_dir / "eval", config, progress=False
    )
    updates = restore(model, validation, train_env, config, out_dir) if resume else 0
    resumable = ResumeCheckpoint(out_dir, config, validation, train_env, config.checkpoint_updates, updates)
    callback = CallbackList(
        [
            validation,
            CheckpointCallback(max(1, config.checkpoint_freq // config.n_envs), str(out_dir / "checkpoints")),
            resumable,
            *callbacks,
        ]
    )
    setup = time.perf_counter() - t0
    remaining = max(0, config.total_timesteps - model.num_timesteps)
    if remaining:
        model.learn(
            remaining,
            callback=callback,
            progress_bar=progress,
            tb_log_name="ppo",
            reset_num_timesteps=not resume,
        )
    train_seconds = time.perf_counter() - t0 - setup
    save_policy(model, out_dir / "last", config)
    if config.keep == "best" and (out_dir / "best" / POLICY_WEIGHTS).is_file():
        model.policy.load_state_dict(load_file(str(out_dir / "best" / POLICY_WEIGHTS)), strict=True)
    save_policy(model, out_dir, config)
    p, d = venv.venv.max_patches, venv.venv.dim
    atomic_write_json(
        out_dir / "train.json",
        {
            "config": {**asdict(config), "env_kwargs": json_safe_kwargs(config.env_kwargs)},
            "kept": config.keep,
            "best_criterion": validation.best,
            "setup_seconds": setup,
            "train_seconds": train_seconds,
            "timesteps": int(model.num_timesteps),
            "torch_threads": torch.get_num_threads(),
            "num_patches": int(p),
            "dim": int(d),
            "path": config.path,
            "rollout_buffer_bytes": rollout_buffer_bytes(p, d, config.n_steps, config.n_envs)
            if config.path == "plain"
            else model.rollout_buffer.stored_bytes(),  # the last rollout's rows
            "validation": validation.history,
        },
    )
    train_env.close()
    val_env.close()
    return model
