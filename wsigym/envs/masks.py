"""Legal-action masks through wrappers and vector environments.

``WSIZoomEnv.action_masks()`` gives the legal actions of one environment, ``(max_patches,)`` bool. Gymnasium
1.x wrappers do not forward attributes, so ``gym.make("WSIZoom-v0").action_masks()`` (an ``OrderEnforcing``
wrapper) raises ``AttributeError``, and Gymnasium's vector environments have neither ``action_masks`` nor the
``get_wrapper_attr`` that sb3-contrib's ``get_action_masks`` falls back on. This module closes those gaps:

- :func:`action_masks` ``(env) -> bool array`` for any of: a ``WSIZoomEnv``; any chain of Gymnasium
  wrappers around one (through ``get_wrapper_attr``); a Gymnasium ``SyncVectorEnv`` / ``AsyncVectorEnv``
  (``call("action_masks")``, one row per sub-environment, ``(num_envs, max_patches)``); a
  stable-baselines3 ``VecEnv`` (``env_method("action_masks")``); wsigym's own vector envs;
- :class:`ActionMasks`: a Gymnasium wrapper whose ``action_masks()`` works whatever it wraps (put it
  outermost, e.g. ``ActionMasks(RecordEpisodeStatistics(gym.make("WSIZoom-v0")))``), so code that calls
  ``env.action_masks()`` directly (sb3-contrib's ``MaskablePPO``, evaluation loops) sees it;
- :class:`VectorActionMasks`: the same for a Gymnasium vector environment, with ``get_wrapper_attr`` and
  ``env_method`` so that sb3-contrib's ``get_action_masks(vec_env)`` works on it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


def action_masks(env: Any) -> np.ndarray:
    """Legal actions of ``env``: ``(max_patches,)`` bool for one environment (wrapped or not),
    ``(num_envs, max_patches)`` bool for a vector environment (Gymnasium's, SB3's or wsigym's).

    Raises:
        TypeError: naming the type, for an object that is none of these.
    """
    own = getattr(type(env), "action_masks", None)
    if callable(own):  # WSIZoomEnv, the wrappers below, WSIZoomVectorEnv, WSIZoomSB3VecEnv
        return np.asarray(env.action_masks(), dtype=bool)
    if hasattr(env, "env_method"):  # stable-baselines3 VecEnv
        return np.stack([np.asarray(m, dtype=bool) for m in env.env_method("action_masks")])
    if isinstance(env, gym.vector.VectorEnv):  # SyncVectorEnv, AsyncVectorEnv and their wrappers
        return np.stack([np.asarray(m, dtype=bool) for m in env.call("action_masks")])
    if isinstance(env, gym.Env):
        return np.asarray(env.get_wrapper_attr("action_masks")(), dtype=bool)
    raise TypeError(
        f"action_masks: expected a WSIZoom environment, a Gymnasium wrapper or vector env around one, or an "
        f"SB3 VecEnv; got {type(env).__name__}"
    )


class ActionMasks(gym.Wrapper):
    """Expose ``action_masks()`` of the wrapped WSIZoom environment, through any wrappers in between."""

    def action_masks(self) -> np.ndarray:
        """``(max_patches,)`` bool: the legal actions now."""
        return np.asarray(self.env.get_wrapper_attr("action_masks")(), dtype=bool)


class VectorActionMasks(gym.vector.VectorWrapper):
    """Expose ``action_masks()`` ``(num_envs, max_patches)`` of a Gymnasium vector env of WSIZoom envs,
    plus ``get_wrapper_attr`` and ``env_method`` (the two paths of sb3-contrib's ``get_action_masks``)."""

    def action_masks(self) -> np.ndarray:
        """``(num_envs, max_patches)`` bool: the legal actions of every sub-environment now."""
        return action_masks(self.env)

    def get_wrapper_attr(self, name: str) -> Any:
        """``getattr`` on the outermost layer that has ``name`` (Gymnasium's ``Env.get_wrapper_attr`` rule)."""
        layer: Any = self
        while True:
            if name in dir(layer):
                return getattr(layer, name)
            if not hasattr(layer, "env"):
                raise AttributeError(f"{type(self).__name__}: no wrapper or environment has {name!r}")
            layer = layer.env

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        """``method_name(*args, **kwargs)`` on each sub-environment (all, or ``indices``), as SB3's VecEnv."""
        results = list(self.env.call(method_name, *args, **kwargs))
        if indices is None:
            return results
        picked = [indices] if isinstance(indices, int) else list(indices)
        return [results[i] for i in picked]
