"""Train the zoom policy with sb3-contrib's ``MaskablePPO`` and :class:`~wsigym.agents.policy.PatchPolicy`.

SASHA's PPO settings (its configs and ``rl_algorithms/ppo.py`` in coglabiisc/SASHA) mapped onto SB3:

==============================  ==================================  ======================================
SASHA (custom loop)             here (SB3 / sb3-contrib)            note
==============================  ==================================  ======================================
gamma 1.0, GAE lambda 0.95      ``gamma=1.0, gae_lambda=0.95``      same (SASHA-0.1 on C16: 0.94)
clip 0.2                        ``clip_range=0.2``                  same (C16 after PR #5)
entropy 0.001                   ``ent_coef=0.001``                  same sign convention as the fixed code
4 epochs per rollout            ``n_epochs=4``                      same
full-batch update               ``batch_size=64`` of 4x32 = 128     minibatches bound the activation memory
grad-norm clip 0.5              ``max_grad_norm=0.5``               same
two AdamW, lr 1e-5              one Adam, ``learning_rate=1e-4``    one optimiser for actor and critic;
                                                                    larger for short CPU runs
2 episodes per slide in turn    ``n_envs=4`` slides in parallel     batched vector env; random slide per
                                                                    reset (:mod:`wsigym.agents.sb3_vec`)
reward -CE per step             same, scaled by ``VecNormalize``    SB3 has one optimiser and one grad clip:
                                (``norm_reward``, training only)    unscaled returns (~ -CE x steps left)
                                                                    would let the critic's gradient
                                                                    swamp the actor's
best of (2-AUC-F1)+loss on val  :class:`ValidationCallback`         same criterion on the validation split
critic target A + V_old         SB3's GAE returns                   same as the fixed code
masks only in rollout           masks in rollout *and* update       fixes SASHA pitfall 1
==============================  ==================================  ======================================

**Options beyond SASHA's settings.** On ``synth-c16`` SASHA's reward teaches little per step: only 11.7%
of random zooms on tumour patches change HAFED's cross-entropy by more than 0.05, because after the first
tumour zoom the slide is classified and the cross-entropy saturates (``examples/reward_information.py``).
These options exist to make such rewards count, and the README reports what each did:
``reward="evidence"`` (the environment's weakly supervised per-zoom evidence, see
:mod:`wsigym.envs.reward`) or ``"delta_ce"`` / ``"delta_margin"`` with ``gamma=0`` (each zoom credited
with what it reveals or changes: a contextual bandit); ``standardise=True`` (the policy sees
patch-to-patch differences, not the slide's common offset); ``vf_coef=0`` (with ``gamma=0`` a critic
only adds noise to ``A = r - V``); a large ``max_grad_norm`` (the joint clip hits the rare reward's
minibatch hardest); many environments with a small training budget (more slides per timestep:
``examples/policy_gradient_probe.py`` shows that samples drawn from few slides teach a policy gradient
much less).

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

**Saving.** :func:`save_policy` writes ``policy.safetensors`` + ``policy.json`` (loaded by
:func:`load_policy` without pickle) and SB3's own zip for SB3 tooling (pickle: trusted use only).
The policy is defined for any number of patches, so a loaded :class:`PolicyAgent` runs on any split.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import load_file, save_file
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.policy import (
    EXTRA_CHANNELS,
    PAD_LOGIT,
    TOKENS,
    PatchPolicy,
    patch_rows,
    scale_actor_logits,
    warm_start_from_hafed,
)
from wsigym.agents.sb3_vec import make_sb3_vec_env
from wsigym.agents.segment_ppo import SegmentMaskablePPO
from wsigym.data.folder import atomic_write_text

#: How :func:`train_ppo` stores and evaluates rollouts: ``"segments"`` (episodes as changed rows,
#: :mod:`wsigym.agents.segment_ppo`, the default) or ``"plain"`` (SB3's buffer of padded observations).
#: Same loss; the minibatches of ``"segments"`` are whole segments of episodes.
TRAINING_PATHS = ("segments", "plain")

POLICY_WEIGHTS = "policy.safetensors"
POLICY_CONFIG = "policy.json"  # not config.json: a zoo model folder is recognised by config.json


@dataclass
class PPOConfig:
    """Hyperparameters of :func:`train_ppo` (see the module docstring for the SASHA mapping).

    ``env_kwargs`` go to the environment (``dataset``, ``budget``, ``hafed``, ``tsu``, ``reward``...);
    the split is set by :func:`train_ppo` (``train`` for training, ``val`` for the callback).
    ``hidden=None`` takes HAFED's ``attn_dim`` (needed for the warm start). The critic's attention is
    narrower (32) than SASHA's (128) to cut the per-patch cost of a forward pass by about 3/8.
    ``tokens`` (:data:`~wsigym.agents.policy.TOKENS`) is what the policy reads per patch; ``path``
    (:data:`TRAINING_PATHS`) how rollouts are stored and evaluated.
    """

    env_id: str = "WSIZoom-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    total_timesteps: int = 20_000
    n_envs: int = 4
    n_steps: int = 32
    batch_size: int = 64
    n_epochs: int = 4
    learning_rate: float = 1e-4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.001
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    normalize_reward: bool = True
    hidden: int | None = None
    critic_hidden: int = 64
    critic_attention: int | None = 32
    standardise: bool = False
    tokens: str = "state+context"
    warm_start: bool = True
    warm_start_logit_std: float | None = 2.0
    eval_freq: int = 5_000
    eval_slides: int | None = None
    checkpoint_freq: int = 10_000
    keep: str = "best"
    seed: int = 0
    device: str = "cpu"
    path: str = "segments"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PPOConfig:
        """From :func:`dataclasses.asdict` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PPOConfig: unknown keys {unknown}")
        return cls(**data)

    def __post_init__(self) -> None:
        if self.keep not in ("best", "last"):
            raise ValueError(f"PPOConfig.keep must be 'best' or 'last', got {self.keep!r}")
        if self.path not in TRAINING_PATHS:
            raise ValueError(f"PPOConfig.path must be one of {TRAINING_PATHS}, got {self.path!r}")
        if self.tokens not in TOKENS:
            raise ValueError(f"PPOConfig.tokens must be one of {TOKENS}, got {self.tokens!r}")
        if self.standardise and self.warm_start:
            raise ValueError(
                "PPOConfig: standardise=True needs warm_start=False (HAFED reads raw state rows)"
            )


#: Named training recipes: :class:`PPOConfig` fields over its defaults (``env_kwargs`` merged).
#: ``"sasha"`` is SASHA's settings mapped onto SB3 (the table above). ``"evidence-bandit"`` is the
#: shipped ``ppo-WSIZoom-v0``: the weakly supervised ``"evidence"`` reward with ``gamma=0`` (a contextual
#: bandit), short episodes (2% budget) over 16 slides at a time, standardised rows, no critic loss and
#: no gradient clip; about 32 minutes on one CPU thread on synth-c16 (README "Results").
RECIPES: dict[str, dict[str, Any]] = {
    "sasha": {},
    "evidence-bandit": {
        "env_kwargs": {"reward": "evidence", "budget": 0.02},
        "total_timesteps": 32768,
        "n_envs": 16,
        "n_steps": 16,
        "batch_size": 64,
        "n_epochs": 1,
        "learning_rate": 3e-3,
        "gamma": 0.0,
        "gae_lambda": 0.0,
        "vf_coef": 0.0,
        "max_grad_norm": 1000.0,
        "hidden": 32,
        "standardise": True,
        "warm_start": False,
        "eval_freq": 4096,
        "eval_slides": 27,
    },
}


def ppo_config(recipe: str = "sasha", **overrides: Any) -> PPOConfig:
    """A :class:`PPOConfig` from a named recipe (:data:`RECIPES`), with ``overrides`` on top; the
    ``env_kwargs`` of both are merged (``overrides`` win).

    Raises:
        ValueError: for an unknown recipe or field.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    values = {**RECIPES[recipe], **overrides}
    values["env_kwargs"] = {**RECIPES[recipe].get("env_kwargs", {}), **overrides.get("env_kwargs", {})}
    return PPOConfig.from_dict(values)


def rollout_buffer_bytes(num_patches: int, dim: int, n_steps: int, n_envs: int) -> int:
    """Bytes of SB3's rollout buffer observations (float32): ``n_steps * n_envs * P * (d + 8) * 4`` + masks."""
    per_obs = num_patches * (dim + 2 + 4) + 1  # state, coords, 4 binary keys, budget
    return int(n_steps * n_envs * (per_obs + num_patches) * 4)  # + the action masks


def _json_safe_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Env kwargs for JSON: model instances and datasets become their description."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, Path):
            out[k] = str(v)
        else:
            out[k] = f"<{type(v).__name__}>"
    return out


def make_model(config: PPOConfig, env: Any, tensorboard_log: str | None = None) -> MaskablePPO:
    """Build a MaskablePPO with the per-patch policy for ``env`` (an SB3 VecEnv), warm-started if asked."""
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
        },
        tensorboard_log=tensorboard_log,
        seed=config.seed,
        device=config.device,
        verbose=0,
    )
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
        self._next = 0
        self._start = time.perf_counter()

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        self._evaluate()  # the warm-started policy, at step 0

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._evaluate()
        return True

    def _on_training_end(self) -> None:
        if not self.history or self.history[-1]["timesteps"] != self.num_timesteps:
            self._evaluate()

    def _evaluate(self) -> None:
        from wsigym.evaluate import run_split

        self._next = self.num_timesteps + self.eval_freq
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
        for key in ("accuracy", "auc", "f1", "ece", "nll", "criterion", "zooms", "tumour_hits"):
            if math.isfinite(row.get(key, math.nan)):
                self.logger.record(f"val/{key}", row[key])
        self.log_path.mkdir(parents=True, exist_ok=True)
        _atomic_json(self.log_path / "evaluations.json", {"history": self.history})
        if row["criterion"] < self.best:
            self.best = row["criterion"]
            save_policy(self.model, self.best_path, self.ppo_config, sb3_zip=False)


def _split_env(config: PPOConfig, split: str, n_envs: int, seed: int, progress: bool) -> Any:
    kwargs = {"progress": progress, **config.env_kwargs, "split": split}
    return make_sb3_vec_env(config.env_id, n_envs=n_envs, seed=seed, **kwargs)


def train_ppo(config: PPOConfig, out_dir: str | Path, *, progress: bool = True) -> MaskablePPO:
    """Train a policy with MaskablePPO on ``config.env_id`` (train split), validating on the val split.

    Writes under ``out_dir``: ``tb/`` (TensorBoard), ``checkpoints/`` (SB3 zips), ``eval/evaluations.json``
    (validation history), ``best/`` (best validation policy), ``last/`` (the policy after the last
    update), the kept policy in ``out_dir`` itself (``config.keep``: ``"best"`` validation criterion,
    the warm start included, or ``"last"``; :func:`save_policy`, with an SB3 zip of the same weights:
    the folder is what :mod:`wsigym.agents.publish` pushes) and ``train.json`` (config, wall time,
    rollout memory, validation history). SB3's progress bar is shown with ``progress=True``.
    """
    import gymnasium as gym

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    venv = _split_env(config, "train", config.n_envs, config.seed, progress)
    train_env: Any = VecMonitor(venv)
    if config.normalize_reward:
        train_env = VecNormalize(train_env, norm_obs=False, norm_reward=True, gamma=config.gamma)
    val_kwargs = {"progress": progress, **config.env_kwargs, "split": "val"}
    val_env = gym.make(config.env_id, **{k: v for k, v in val_kwargs.items()})
    val_ids = (
        val_env.unwrapped.slide_ids[: config.eval_slides]
        if config.eval_slides
        else val_env.unwrapped.slide_ids
    )
    model = make_model(config, train_env, tensorboard_log=str(out_dir / "tb"))
    validation = ValidationCallback(
        val_env, val_ids, config.eval_freq, out_dir / "best", out_dir / "eval", config, progress=False
    )
    callbacks = CallbackList(
        [
            validation,
            CheckpointCallback(max(1, config.checkpoint_freq // config.n_envs), str(out_dir / "checkpoints")),
        ]
    )
    setup = time.perf_counter() - t0
    model.learn(config.total_timesteps, callback=callbacks, progress_bar=progress, tb_log_name="ppo")
    train_seconds = time.perf_counter() - t0 - setup
    save_policy(model, out_dir / "last", config)
    if config.keep == "best" and (out_dir / "best" / POLICY_WEIGHTS).is_file():
        model.policy.load_state_dict(load_file(str(out_dir / "best" / POLICY_WEIGHTS)), strict=True)
    save_policy(model, out_dir, config)
    p, d = venv.venv.max_patches, venv.venv.dim
    _atomic_json(
        out_dir / "train.json",
        {
            "config": {**asdict(config), "env_kwargs": _json_safe_kwargs(config.env_kwargs)},
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


# --- save / load without pickle -------------------------------------------------------------------


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def save_policy(
    model: MaskablePPO, directory: str | Path, config: PPOConfig, *, sb3_zip: bool = True
) -> Path:
    """Write ``policy.safetensors`` + ``policy.json`` (no pickle), plus a slim SB3 zip ``ppo-<env>.zip``.

    :func:`load_policy` reads only the safetensors and JSON files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".policy.", suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": "wsigym.agents.policy.PatchPolicy"})
    os.replace(tmp, directory / POLICY_WEIGHTS)
    space = model.observation_space
    p = int(space["patch_mask"].shape[0])
    extractor = model.policy.mlp_extractor
    _atomic_json(
        directory / POLICY_CONFIG,
        {
            "algorithm": "MaskablePPO",
            "policy": "wsigym.agents.policy.PatchPolicy",
            "num_patches": p,
            "dim": int(model.policy.features_extractor.dim),
            "tokens": model.policy.tokens,
            "hidden": int(extractor.actor.tanh_branch.out_features),
            "critic_hidden": int(extractor.latent_dim_vf),
            "critic_attention": int(extractor.critic_attention.tanh_branch.out_features),
            "standardise": bool(model.policy.standardise),
            "env_id": config.env_id,
            "ppo": {**asdict(config), "env_kwargs": _json_safe_kwargs(config.env_kwargs)},
        },
    )
    if sb3_zip:  # slim: the weights just written and a fresh optimiser (wsigym.agents.sb3_export)
        from wsigym.agents.sb3_export import write_zip

        write_zip(directory)
    return directory


def _policy_for(
    num_patches: int,
    dim: int,
    hidden: int,
    critic_hidden: int,
    critic_attention: int,
    standardise: bool = False,
    tokens: str = "state+context",
) -> PatchPolicy:
    from wsigym.envs.zoom_batch import observation_space

    return PatchPolicy(
        observation_space(num_patches, dim),
        spaces.Discrete(num_patches),
        lambda _: 0.0,
        hidden=hidden,
        critic_hidden=critic_hidden,
        critic_attention=critic_attention,
        standardise=standardise,
        tokens=tokens,
    )


class PolicyAgent:
    """A :class:`PatchPolicy` as an agent ``agent(obs, info) -> action``: greedy over legal patches.

    Runs on observations of any padded patch count ``P``. With ``incremental=True`` (default) it keeps
    the state part of the actor's two gate pre-activations, ``V_s s_i`` and ``U_s s_i`` (``(P, h)``),
    between steps of an episode and recomputes them only for rows whose state changed (the zoomed and
    TSU-updated rows); the six extra channels are added every step. With a standardising policy the
    cached ``V_s s_i`` are shifted and scaled by the current mean and spread of the rows, which
    costs one pass over the state. The logits equal a full forward
    pass up to float rounding, at a fraction of its cost.
    """

    deterministic = True

    def __init__(
        self, policy: PatchPolicy, config: dict[str, Any] | None = None, incremental: bool = True
    ) -> None:
        self.policy = policy
        self.config = config or {}
        self.incremental = incremental
        self.dim = policy.features_extractor.dim
        self.context = policy.mlp_extractor.token_dim - self.dim  # 6 context channels, or 0
        self._cache: dict[str, Any] | None = None

    def reset(
        self, env: Any = None, obs: dict[str, np.ndarray] | None = None, info: dict[str, Any] | None = None
    ) -> None:
        """Forget the cached pre-activations (call at the start of every episode)."""
        self._cache = None

    @torch.no_grad()
    def logits(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Actor logits ``(P,)`` of one observation (before masking)."""
        actor = self.policy.mlp_extractor.actor
        device = next(self.policy.parameters()).device
        state = np.asarray(obs["state"], dtype=np.float32)
        p, d = int(np.asarray(obs["patch_mask"]).shape[-1]), self.dim
        if not self.incremental:
            tensors = {k: torch.as_tensor(np.asarray(v)[None], device=device) for k, v in obs.items()}
            features = patch_rows(tensors, d, self.policy.standardise, self.context > 0)
            return self.policy.mlp_extractor.forward_actor(features)[0].cpu().numpy()
        cache = self._cache
        if cache is None or cache["state"].shape != state.shape:
            changed = np.arange(p)
            cache = self._cache = {
                "state": state.copy(),
                "tanh": torch.empty(p, actor.tanh_branch.out_features, device=device),
                "gate": torch.empty(p, actor.gate_branch.out_features, device=device),
                "w_tanh": actor.tanh_branch.weight[:, d:].T.contiguous(),
                "w_gate": actor.gate_branch.weight[:, d:].T.contiguous(),
            }
        else:
            diff = cache["state"] != state
            changed = np.flatnonzero(diff.reshape(p, d).any(axis=1)) if diff.any() else np.zeros(0, np.int64)
            if len(changed):
                cache["state"].reshape(p, d)[changed] = state.reshape(p, d)[changed]
        if len(changed):
            idx = torch.as_tensor(changed, device=device)
            rows = torch.as_tensor(state.reshape(p, d)[changed], device=device)
            cache["tanh"][idx] = rows @ actor.tanh_branch.weight[:, :d].T
            cache["gate"][idx] = rows @ actor.gate_branch.weight[:, :d].T
        extra = np.empty((p, EXTRA_CHANNELS), dtype=np.float32)  # the token's last 6 channels
        extra[:, 0] = np.asarray(obs["visited"]).reshape(p)
        extra[:, 1] = np.asarray(obs["updated"]).reshape(p)
        extra[:, 2:4] = np.asarray(obs["coords"], dtype=np.float32).reshape(p, 2)
        extra[:, 4] = float(np.asarray(obs["budget"]).reshape(-1)[0])
        extra[:, 5] = np.asarray(obs["patch_mask"]).reshape(p)
        x = torch.from_numpy(extra[:, : self.context]).to(device)
        pre_tanh, pre_gate = cache["tanh"], cache["gate"]
        if self.policy.standardise:  # V (s - mean) / sigma = (V s - V mean) / sigma
            real = cache["state"].reshape(p, d)[extra[:, 5] > 0.5]
            mean = real.mean(0)
            sigma = float(np.sqrt(np.square(real - mean).mean())) + 1e-6
            m = torch.as_tensor(mean, device=device)
            pre_tanh = (pre_tanh - actor.tanh_branch.weight[:, :d] @ m) / sigma
            pre_gate = (pre_gate - actor.gate_branch.weight[:, :d] @ m) / sigma
        a = torch.tanh(torch.addmm(pre_tanh + actor.tanh_branch.bias, x, cache["w_tanh"]))
        g = torch.sigmoid(torch.addmm(pre_gate + actor.gate_branch.bias, x, cache["w_gate"]))
        logits = actor.score(a * g)[:, 0].cpu().numpy()
        logits[extra[:, 5] < 0.5] = PAD_LOGIT  # padding, as in the policy's forward pass
        return logits

    def __call__(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> int:
        logits = self.logits(obs)
        legal = np.asarray(obs["action_mask"]).astype(bool)
        if not legal.any():
            raise ValueError("PolicyAgent: no legal action in obs['action_mask']")
        return int(np.flatnonzero(legal)[np.argmax(logits[legal])])


def load_policy(directory: str | Path, device: str = "cpu") -> PolicyAgent:
    """Rebuild the :class:`PatchPolicy` saved by :func:`save_policy` and load its weights strictly.

    ``directory`` may also be a registered name or Hub repo id (e.g. ``"ppo-WSIZoom-v0"``), pulled
    with :func:`zoo.hub.pull`.

    Raises:
        ValueError: naming the file, when files are missing, unreadable, or tensors missing/unexpected.
    """
    directory = Path(directory)
    if not directory.is_dir():
        from zoo import hub

        directory = hub.pull(str(directory))
    cfg_path, weights_path = directory / POLICY_CONFIG, directory / POLICY_WEIGHTS
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise ValueError(f"{path}: missing (expected a policy saved by wsigym.agents.ppo.save_policy)")
    try:
        config = json.loads(cfg_path.read_text())
        policy = _policy_for(
            int(config["num_patches"]),
            int(config["dim"]),
            int(config["hidden"]),
            int(config["critic_hidden"]),
            int(config["critic_attention"]),
            bool(config.get("standardise", False)),  # absent in policies saved before the option
            str(config.get("tokens", "state+context")),  # likewise
        ).to(device)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: not a policy config ({type(e).__name__}: {e})") from None
    try:
        state = load_file(str(weights_path), device=device)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights_path}: not a readable safetensors file ({e})") from None
    expected = policy.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise ValueError(
            f"{weights_path}: missing tensors {missing}, unexpected tensors {unexpected}, wrong shapes {sorted(bad)}"
        )
    policy.load_state_dict(state, strict=True)
    return PolicyAgent(policy.eval(), config)
