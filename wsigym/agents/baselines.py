"""Baseline zoom agents every learned agent is compared with.

An *agent* is any callable ``agent(obs, info) -> action`` (obs and info as ``WSIZoom-v0`` returns
them). Agents may also define ``reset(env, obs, info)``, which :func:`wsigym.evaluate.evaluate`
calls at the start of every episode with the (unwrapped) environment: baselines that need the
slide before the first step (ranking by attention, privileged ground truth) use it.

- :class:`RandomAgent`: uniform over the valid, unzoomed patches.
- :class:`AttentionTopK`: the patches the frozen HAFED attends most in the low-res state, in order.
- :class:`AttentionGreedy`: at every step, the patch HAFED attends most in the *current* state ``S_t``,
  so, unlike the fixed orders, its zooms depend on the state update rule.
- :class:`Coverage`: farthest-point order over the patch coordinates, spreading zooms over tissue.
- :class:`Oracle`: zoom tumour first, by ground-truth tumour fraction (an upper bound; privileged).

The two budget extremes, *no-zoom* (low-res state only) and *full-resolution HAFED* (every patch
zoomed), are not agents; :func:`wsigym.evaluate.evaluate` scores them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch


class Agent(Protocol):
    def __call__(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> int: ...


def _legal(obs: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(obs["action_mask"]).astype(bool)


class RandomAgent:
    """Uniform over legal patches; seeded."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> int:
        return int(self.rng.choice(np.flatnonzero(_legal(obs))))


class _RankedAgent:
    """Zooms patches in a fixed per-episode order (highest priority first), skipping illegal ones."""

    deterministic = True

    def __init__(self) -> None:
        self.order: np.ndarray = np.zeros(0, dtype=np.int64)

    def priority(self, env: Any, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def reset(self, env: Any, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        prio = np.asarray(self.priority(env, obs, info), dtype=np.float64)
        prio = np.where(np.asarray(obs["patch_mask"]).astype(bool), prio, -np.inf)
        self.order = np.argsort(-prio, kind="stable")

    def __call__(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> int:
        legal = _legal(obs)
        for a in self.order:
            if legal[a]:
                return int(a)
        return int(np.flatnonzero(legal)[0])


class AttentionTopK(_RankedAgent):
    """Zoom in decreasing order of HAFED's branch-averaged attention on the low-res state.

    The order is fixed at ``reset`` from the first (all low-res) state, i.e. the patches HAFED attends
    most at low resolution.

    Args:
        hafed: a HAFED whose ``classify`` returns ``attention``; by default the environment's own
            classifier, read through ``env.attention()`` (``WSIZoomEnv``'s incremental classifier).
    """

    def __init__(self, hafed: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.hafed = hafed

    @torch.no_grad()
    def priority(self, env: Any, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        if self.hafed is None and hasattr(env, "attention"):
            return np.asarray(env.attention(), dtype=np.float64)
        hafed = self.hafed if self.hafed is not None else env.hafed
        mask = np.asarray(obs["patch_mask"]).astype(bool)
        p = mask.shape[0]
        state = torch.as_tensor(np.asarray(obs["state"]), dtype=torch.float32).reshape(1, p, -1)
        param = next(hafed.parameters())
        out = hafed.classify(state.to(param.device), torch.as_tensor(mask)[None].to(param.device))
        return out["attention"][0].cpu().numpy()


class AttentionGreedy:
    """Zoom the legal patch that HAFED attends most in the current state ``S_t``, re-ranked every step.

    :class:`AttentionTopK` fixes its order from the low-res state, so it makes the same zooms under
    every state update rule. This agent reads HAFED's branch-averaged attention on ``S_t`` before each
    zoom (``env.attention()``, the environment's incremental classifier), so what an update writes
    changes where it looks next: rows a zoom of a mimic refreshes with their high-res prediction can
    lose attention, rows refreshed from a tumour zoom can gain it. It is the simplest agent whose zooms
    depend on the state, a fixed reference for what an update rule gives an agent that reads it.
    Ties go to the lowest patch index.

    Raises:
        TypeError: at ``reset``, for an environment without ``attention()`` (``WSIZoomEnv`` has it).
    """

    deterministic = True

    def __init__(self) -> None:
        self.env: Any = None

    def reset(self, env: Any, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        if not callable(getattr(env, "attention", None)):
            raise TypeError(
                f"attention-greedy reads HAFED's attention on the current state through env.attention(); "
                f"{type(env).__name__} has none"
            )
        self.env = env

    def __call__(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> int:
        if self.env is None:
            raise RuntimeError("AttentionGreedy needs reset(env, obs, info) at the start of each episode")
        attention = np.asarray(self.env.attention(), dtype=np.float64)
        return int(np.argmax(np.where(_legal(obs), attention, -np.inf)))


class Coverage(_RankedAgent):
    """Farthest-point order over the normalised patch coordinates, from the patch nearest the centre."""

    def priority(self, env: Any, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        mask = np.asarray(obs["patch_mask"]).astype(bool)
        xy = np.asarray(obs["coords"], dtype=np.float64).reshape(-1, 2)  # obs coords may be flat (P*2,)
        idx = np.flatnonzero(mask)
        pts = xy[idx]
        first = int(np.argmin(((pts - pts.mean(0)) ** 2).sum(1)))
        dist = np.full(len(idx), np.inf)
        order = []
        current = first
        for _ in range(len(idx)):
            order.append(current)
            dist = np.minimum(dist, ((pts - pts[current]) ** 2).sum(1))
            dist[order] = -np.inf
            current = int(np.argmax(dist))
        prio = np.full(mask.shape[0], -np.inf)
        prio[idx[order]] = -np.arange(len(order), dtype=np.float64)
        return prio


class Oracle(_RankedAgent):
    """Zoom in decreasing order of ground-truth tumour fraction (privileged upper bound).

    Reads the current slide's padded ``(P,)`` tumour fractions from the environment
    (:func:`tumour_truth`); raises a ``ValueError`` on datasets without ground truth.
    """

    def priority(self, env: Any, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        truth = tumour_truth(env)
        if truth is None:
            raise ValueError(
                "the oracle baseline needs per-patch ground truth (tumour_fraction); this dataset has none"
            )
        return np.asarray(truth, dtype=np.float64)


def tumour_truth(env: Any) -> np.ndarray | None:
    """Ground-truth tumour fraction of the current slide's patches ``(P,)`` (padding NaN), or None.

    Uses ``env.tumour_fraction()`` when the environment has it, else the engine's per-episode
    array (``env.batch.tumour_np[0]``, read-only). None when every value is unknown (NaN).
    """
    if callable(getattr(env, "tumour_fraction", None)):
        truth = np.asarray(env.tumour_fraction(), dtype=np.float64)
    elif hasattr(env, "batch") and hasattr(env.batch, "tumour_np"):
        truth = np.asarray(env.batch.tumour_np[0], dtype=np.float64)
    else:
        return None
    return None if not np.isfinite(truth).any() else truth


BASELINES: dict[str, Callable[..., Agent]] = {
    "random": RandomAgent,
    "attention-topk": AttentionTopK,
    "attention-greedy": AttentionGreedy,
    "coverage": Coverage,
    "oracle": Oracle,
}


def make_baseline(name: str, seed: int = 0) -> Agent:
    """Build a baseline agent by name (``random``, ``attention-topk``, ``attention-greedy``, ``coverage``,
    ``oracle``)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    return RandomAgent(seed) if name == "random" else BASELINES[name]()
