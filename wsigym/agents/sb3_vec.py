"""An SB3 ``VecEnv`` over the batched torch vector env :class:`~wsigym.envs.vector.WSIZoomVectorEnv`.

stable-baselines3 expects the old VecEnv contract, which differs from Gymnasium 1.x vector envs:

- **same-step autoreset**: when sub-environment ``i`` ends, ``step_wait`` returns ``done[i] = True``,
  the *first* observation of its next episode in ``obs``, and the last observation of the ended
  episode in ``infos[i]["terminal_observation"]`` (plus ``infos[i]["TimeLimit.truncated"]``).
  Here the ended sub-environments are reloaded at once with
  ``reset(options={"reset_mask": done})`` (new slides from their own generators), so the wrapped
  env's NEXT_STEP autoreset never triggers.
- ``infos`` is a list of per-environment dicts (the vector env's dict of arrays is split).
- ``env_method("action_masks")`` returns one ``(P,)`` bool mask per sub-environment, so
  sb3-contrib's ``get_action_masks`` / ``is_masking_supported`` work; ``get_attr`` reads attributes
  of the vector env (``hafed``, ``tsu``, ``slide_ids``, ``max_patches``, ...), the same value for
  every index.
- ``seed(s)`` (SB3) seeds sub-environment ``i`` with ``s + i`` at the next ``reset()``, as
  ``make_vec_env`` does.

One sub-environment step costs one batched engine step for all ``n_envs`` slides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from wsigym.envs.vector import WSIZoomVectorEnv

#: Per-environment info keys copied from the vector env's info dict.
INFO_KEYS = (
    "prediction",
    "probability",
    "label",
    "zooms",
    "budget_steps",
    "ce",
    "slide_id",
    "tsu_updates",
    "hit_tumour",
    "tumour_fraction",
)


class WSIZoomSB3VecEnv(VecEnv):
    """SB3 view of a :class:`WSIZoomVectorEnv` (module docstring).

    Args:
        venv: the batched vector env (or pass ``num_envs`` and env keyword arguments to build one).
    """

    def __init__(self, venv: WSIZoomVectorEnv | None = None, num_envs: int = 1, **env_kwargs: Any) -> None:
        if venv is None:
            venv = WSIZoomVectorEnv(num_envs=num_envs, **env_kwargs)
        elif env_kwargs:
            raise TypeError("pass either a vector env or keyword arguments to build one, not both")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.render_mode = venv.render_mode
        self._actions: np.ndarray | None = None
        self.reset_infos = [{} for _ in range(self.num_envs)]

    # ------------------------------------------------------------------ stepping
    def _split_info(self, info: dict[str, Any], e: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in INFO_KEYS:
            if key in info and info.get(f"_{key}", np.ones(self.num_envs, dtype=bool))[e]:
                value = info[key][e]
                out[key] = value.item() if isinstance(value, np.generic) else value
        if "hit_tumour" in out:
            out["hit_tumour"] = bool(out["hit_tumour"])
        return out

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options[0] if self._options and self._options[0] else None
        obs, info = self.venv.reset(seed=seeds, options=options)
        self.reset_infos = [self._split_info(info, e) for e in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        dones = np.asarray(terminated) | np.asarray(truncated)
        infos = [self._split_info(info, e) for e in range(self.num_envs)]
        for e in range(self.num_envs):
            infos[e]["TimeLimit.truncated"] = bool(truncated[e] and not terminated[e])
        if dones.any():
            if obs:  # {} while the vector env does not observe (``observe=False``)
                for e in np.flatnonzero(dones):
                    infos[e]["terminal_observation"] = {k: v[e].copy() for k, v in obs.items()}
            obs, reset_info = self.venv.reset(options={"reset_mask": dones})
            for e in np.flatnonzero(dones):
                self.reset_infos[e] = self._split_info(reset_info, e)
        return obs, np.asarray(reward, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    # ------------------------------------------------------------------ attributes
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def action_masks(self) -> np.ndarray:
        """Legal actions ``(n_envs, P)`` bool."""
        return self.venv.action_masks()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)  # AttributeError as SB3 expects for has_attr
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        idx = self._indices(indices)
        if method_name == "action_masks":
            masks = self.venv.action_masks()
            return [masks[e] for e in idx]
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in idx]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return [None] * self.num_envs if frames is None else list(frames)


def make_sb3_vec_env(
    env_id: str = "WSIZoom-v0", n_envs: int = 1, seed: int | None = None, **env_kwargs: Any
) -> WSIZoomSB3VecEnv:
    """A seeded :class:`WSIZoomSB3VecEnv` of ``n_envs`` slides of a registered ``WSIZoom*`` env.

    ``env_kwargs`` are ``WSIZoom-v0``'s (``copy_obs`` is named ``copy`` in the vector env).
    """
    import wsigym  # noqa: F401  (registers the environments)

    kwargs = dict(env_kwargs)
    if "copy_obs" in kwargs:
        kwargs["copy"] = kwargs.pop("copy_obs")
    venv = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **kwargs)
    inner = venv
    while not isinstance(inner, WSIZoomVectorEnv) and hasattr(inner, "env"):
        inner = inner.env
    if not isinstance(inner, WSIZoomVectorEnv):
        raise TypeError(f"{env_id}: its vector entry point is not a WSIZoomVectorEnv ({type(venv).__name__})")
    env = WSIZoomSB3VecEnv(inner)
    if seed is not None:
        env.seed(seed)
    return env
