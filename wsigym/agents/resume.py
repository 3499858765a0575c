r"""Training that survives interruption: resumable checkpoints of a PPO run and their restore.

Every ``PPOConfig.checkpoint_updates`` updates (at the start of the next rollout, so the update has
finished) :class:`ResumeCheckpoint` writes ``<run>/resume/update-<k>/``:

- ``policy.safetensors`` + ``policy.json`` (:func:`wsigym.agents.policy_writer.save_policy`, no pickle);
- ``optimizer.safetensors`` (every tensor of the optimiser state, keys ``<param index>.<name>``) and
  ``rng.safetensors`` (torch's CPU generator, and CUDA's when used);
- ``state.json``: ``num_timesteps``, ``updates``, SB3's episode counter, the optimiser's
  ``param_groups``, the validation history and best criterion (the ``best/`` policy on disk is the
  best so far), ``VecNormalize``'s reward statistics when used, numpy's and Python's global RNG states,
  and the run's :class:`~wsigym.agents.recipes.PPOConfig`.

The folder is written under a temporary name and renamed (:func:`wsigym.io.atomic_folder`); ``resume/latest.json`` (replaced
atomically) then names it, and older checkpoints are removed, so an interruption at any moment leaves
the previous checkpoint usable. :func:`restore` puts a fresh model back in that state:
``train_ppo(config, run, resume=True)`` (``wsigym train ppo --resume RUN``) continues to the same
``total_timesteps`` with ``reset_num_timesteps=False``, so SB3 appends to the same TensorBoard run
(``tb/ppo_1``) at the continuing timestep, and ``eval/evaluations.json`` continues its history.

**On another machine.** :func:`export_run` copies what a run needs to continue elsewhere (its latest
checkpoint, ``best/``, ``eval/`` and ``tb/``; a few MB) into a folder, and :func:`import_run` makes a run
folder of such a copy; :class:`ExportCheckpoints` exports after every new checkpoint. SASHA's reproduction
keeps its unfinished runs this way in the repository (:mod:`wsigym.agents.reproduction`), since a session's
machine and its ``runs/`` do not outlive the session.

**As far as SB3 allows.** The episodes in flight at the checkpoint are not saved (the environments
hold slide state SB3 cannot serialise): the resumed run restarts its environments, seeded with
``seed + updates`` so the resumed run is itself deterministic. Policy, optimiser, timestep counter,
update counter, global RNG states, reward normalisation and best-so-far continue exactly; the
uninterrupted and the resumed run end at the same total timesteps, but their later rollouts differ.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from wsigym.agents.recipes import PPOConfig, json_safe_kwargs
from wsigym.errors import DataError
from wsigym.io import atomic_folder, atomic_write_json

RESUME_DIR = "resume"
LATEST = "latest.json"
STATE = "state.json"


def _config_record(config: PPOConfig) -> dict[str, Any]:
    return {**asdict(config), "env_kwargs": json_safe_kwargs(config.env_kwargs)}


def _rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def save_checkpoint(
    model: Any, validation: Any, train_env: Any, config: PPOConfig, run_dir: str | Path, updates: int
) -> Path:
    """Write ``run_dir/resume/update-<updates>/`` and point ``resume/latest.json`` at it (module docstring)."""
    from wsigym.agents.policy_writer import save_policy

    root = Path(run_dir) / RESUME_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"update-{updates:07d}"
    with atomic_folder(root / name) as tmp:
        save_policy(model, tmp, config, sb3_zip=False)
        opt = model.policy.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in opt["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_json = _rng_states()
        save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
        state: dict[str, Any] = {
            "num_timesteps": int(updates)
            * int(model.n_steps * model.n_envs),  # the timesteps of those updates
            "updates": int(updates),
            "episode_num": int(model._episode_num),
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
            "validation": {
                "best": validation.best,
                "history": validation.history,
                "next": validation.next_eval,
            },
            "rng": rng_json,
            "config": _config_record(config),
        }
        if isinstance(train_env, VecNormalize):
            rms = train_env.ret_rms
            state["vec_normalize"] = {
                "mean": np.asarray(rms.mean).tolist(),
                "var": np.asarray(rms.var).tolist(),
                "count": float(rms.count),
                "returns": np.asarray(train_env.returns).tolist(),
            }
        atomic_write_json(tmp / STATE, state, indent=1)  # NaN / inf -> null (wsigym.io)
    atomic_write_json(root / LATEST, {"checkpoint": name, "updates": int(updates)})
    for old in root.iterdir():  # earlier checkpoints and leftovers of interrupted writes
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The folder ``resume/latest.json`` names.

    Raises:
        DataError: naming the file when the run has no checkpoint or it is incomplete.
    """
    latest = Path(run_dir) / RESUME_DIR / LATEST
    if not latest.is_file():
        raise DataError(
            str(latest), "no resumable checkpoint (the run wrote none yet, or is not a train ppo run)"
        )
    try:
        name = json.loads(latest.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(str(latest), "expected JSON with a 'checkpoint' key") from None
    folder = latest.parent / str(name)
    for part in (STATE, "optimizer.safetensors", "rng.safetensors", "policy.safetensors"):
        if not (folder / part).is_file():
            raise DataError(str(folder / part), "missing: the checkpoint is incomplete")
    return folder


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The :class:`PPOConfig` record (JSON) of the run's latest checkpoint."""
    return json.loads((latest_checkpoint(run_dir) / STATE).read_text())["config"]


def restore(model: Any, validation: Any, train_env: Any, config: PPOConfig, run_dir: str | Path) -> int:
    """Load the latest checkpoint of ``run_dir`` into a freshly built ``model`` (and the validation
    callback, the reward normaliser, the global RNGs); returns the number of updates done.

    Raises:
        DataError: naming the file, for a missing or incomplete checkpoint, or one written with another
            configuration (any :class:`PPOConfig` field but ``total_timesteps`` differs).
    """
    folder = latest_checkpoint(run_dir)
    state = json.loads((folder / STATE).read_text())
    mine, theirs = _config_record(config), state["config"]
    differ = sorted(
        k for k in set(mine) | set(theirs) if k != "total_timesteps" and mine.get(k) != theirs.get(k)
    )
    if differ:
        raise DataError(
            str(folder / STATE),
            f"written by a run with other settings ({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)}); "
            "resume with the same configuration (only total_timesteps may change)",
        )
    weights = load_file(str(folder / "policy.safetensors"), device=str(model.device))
    model.policy.load_state_dict(weights, strict=True)
    tensors = load_file(str(folder / "optimizer.safetensors"), device=str(model.device))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    for index, values in state["optimizer"]["scalars"].items():
        opt_state.setdefault(int(index), {}).update(values)
    for values in opt_state.values():  # Adam's step counters live on the CPU unless capturable
        if "step" in values and isinstance(values["step"], torch.Tensor):
            values["step"] = values["step"].cpu()
    groups = [  # JSON turned tuples (Adam's betas) into lists
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in state["optimizer"]["param_groups"]
    ]
    model.policy.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    model.num_timesteps = int(state["num_timesteps"])
    model._episode_num = int(state["episode_num"])
    val = state["validation"]
    validation.best = float(val["best"]) if val["best"] is not None else validation.best
    validation.history = list(val["history"])
    validation.next_eval = int(val["next"])
    if "vec_normalize" in state:
        if not isinstance(train_env, VecNormalize):
            raise DataError(
                str(folder / STATE), "has reward-normalisation statistics but the run does not normalise"
            )
        vn = state["vec_normalize"]
        train_env.ret_rms.mean = np.asarray(vn["mean"], dtype=np.float64)
        train_env.ret_rms.var = np.asarray(vn["var"], dtype=np.float64)
        train_env.ret_rms.count = float(vn["count"])
        train_env.returns = np.asarray(vn["returns"], dtype=np.float64)
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    updates = int(state["updates"])
    train_env.seed(config.seed + updates)  # the episodes in flight are lost: restart them, seeded
    return updates


#: Folders of a run that :func:`export_run` copies besides its latest checkpoint: the best policy so far
#: (kept at the end), the validation history and the TensorBoard logs (so the curves continue).
PORTABLE_PARTS = ("best", "eval", "tb")
#: Attempts of :func:`export_run` when the run rotates its checkpoint during the copy (another process).
EXPORT_ATTEMPTS = 3


def export_run(run_dir: str | Path, target: str | Path, extra_files: tuple[str, ...] = ()) -> Path | None:
    """Copy what run ``run_dir`` needs to continue on another machine into the folder ``target``: its latest
    resumable checkpoint (with ``resume/latest.json``), :data:`PORTABLE_PARTS` and ``extra_files`` (names in
    ``run_dir``). ``target`` is written as a temp folder, then renamed into place, so it is always a complete
    copy. Safe beside the training process: a checkpoint rotated away during the copy is copied again.

    Returns:
        ``target``, or None (nothing written) when the run has no checkpoint yet.
    """
    run_dir, target = Path(run_dir), Path(target)
    for attempt in range(EXPORT_ATTEMPTS):
        try:
            checkpoint = latest_checkpoint(run_dir)
        except DataError:
            return None
        try:
            with atomic_folder(target) as tmp:
                shutil.copytree(checkpoint, tmp / RESUME_DIR / checkpoint.name)
                shutil.copyfile(run_dir / RESUME_DIR / LATEST, tmp / RESUME_DIR / LATEST)
                latest_checkpoint(tmp)  # still the checkpoint copied (not rotated in between), and complete
                for part in PORTABLE_PARTS:
                    if (run_dir / part).is_dir():
                        shutil.copytree(run_dir / part, tmp / part)
                for name in extra_files:
                    shutil.copyfile(run_dir / name, tmp / name)
            return target
        except (FileNotFoundError, DataError):
            if attempt == EXPORT_ATTEMPTS - 1:
                raise
    return None  # pragma: no cover - the loop returns or raises


def import_run(source: str | Path, run_dir: str | Path) -> Path:
    """Make ``run_dir`` (replaced) a copy of the exported run ``source`` (:func:`export_run`);
    ``train_ppo(config, run_dir, resume=True)`` then continues it.

    Raises:
        DataError: naming the file, when ``source`` holds no complete checkpoint.
    """
    source, run_dir = Path(source), Path(run_dir)
    latest_checkpoint(source)
    with atomic_folder(run_dir) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return run_dir


class ExportCheckpoints(BaseCallback):
    """After each new resumable checkpoint of ``run_dir`` (and at the end of training), :func:`export_run`
    it to ``target``. Put it after :class:`ResumeCheckpoint` (``train_ppo``'s ``callbacks`` are)."""

    def __init__(self, run_dir: str | Path, target: str | Path, extra_files: tuple[str, ...] = ()) -> None:
        super().__init__(verbose=0)
        self.run_dir, self.target, self.extra_files = Path(run_dir), Path(target), tuple(extra_files)
        self.exported: str | None = None

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self._export()

    def _on_training_end(self) -> None:
        self._export()

    def _export(self) -> None:
        latest = self.run_dir / RESUME_DIR / LATEST
        text = latest.read_text() if latest.is_file() else None
        if text is not None and text != self.exported:
            export_run(self.run_dir, self.target, self.extra_files)
            self.exported = text


class ResumeCheckpoint(BaseCallback):
    """Write a resumable checkpoint every ``every`` updates (and after the last one)."""

    def __init__(
        self, run_dir: Path, config: PPOConfig, validation: Any, train_env: Any, every: int, updates: int = 0
    ) -> None:
        super().__init__(verbose=0)
        self.run_dir, self.config, self.validation, self.train_env = (
            Path(run_dir),
            config,
            validation,
            train_env,
        )
        self.every, self.updates, self.saved = max(1, int(every)), int(updates), int(updates)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        rollout = self.model.n_steps * self.model.n_envs
        self.updates = int(self.model.num_timesteps) // rollout
        if self.updates > self.saved and self.updates % self.every == 0:
            self._save()

    def _on_training_end(self) -> None:
        rollout = self.model.n_steps * self.model.n_envs
        self.updates = int(self.model.num_timesteps) // rollout
        if self.updates > self.saved:
            self._save()

    def _save(self) -> None:
        save_checkpoint(self.model, self.validation, self.train_env, self.config, self.run_dir, self.updates)
        self.saved = self.updates
