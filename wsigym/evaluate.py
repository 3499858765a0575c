"""The evaluation protocol: any agent, on every slide of a split, at fixed zoom budgets, over seeds.

An agent is one of:

- a stable-baselines3 / sb3-contrib model (anything with ``predict(obs, deterministic=..., action_masks=...)``);
- a baseline name: ``random``, ``attention-topk``, ``coverage``, ``oracle`` (see :mod:`wsigym.agents.baselines`),
  or the two budget extremes ``no-zoom`` (low-res state only) and ``full-hafed`` (every patch zoomed);
- any callable ``agent(obs, info) -> action`` (optionally with ``reset(env, obs, info)``), so
  agents need not use SB3.

Every slide of the split is visited once per (budget, seed) in split order
(``reset(options={"slide_id": ...})``). The prediction of an episode is HAFED's class probability
on the final state (``info["probability"]``). Reported per budget, mean +- std over seeds:
accuracy, AUC, binary F1 (class 1), ECE, mean zooms per slide, the fraction of zooms that hit
tumour (when ground truth exists) and wall time per slide.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.baselines import Coverage, make_baseline
from zoo.metrics import classification_metrics

METRICS = ("accuracy", "auc", "f1", "ece", "zooms", "tumour_hits", "seconds_per_slide")
BUDGET_FREE = {"no-zoom": 0.0, "full-hafed": 1.0}


@dataclass
class EvalRow:
    """One agent at one budget: ``mean[metric]`` and ``std[metric]`` over seeds."""

    agent: str
    budget: float
    mean: dict[str, float]
    std: dict[str, float]
    per_seed: list[dict[str, float]] = field(default_factory=list)


@dataclass
class EvalReport:
    dataset: str
    split: str
    env_id: str
    rows: list[EvalRow]

    def to_markdown(self) -> str:
        """A Markdown table: one row per (agent, budget), cells ``mean ± std``."""
        head = "| agent | budget | accuracy | AUC | F1 (binary) | ECE | zooms/slide | tumour hits | s/slide |"
        lines = [head, "|" + "---|" * 9]
        for r in self.rows:
            cells = []
            for m in METRICS:
                mu, sd = r.mean.get(m, math.nan), r.std.get(m, math.nan)
                if math.isnan(mu):
                    cells.append("n/a")
                elif m in ("zooms",):
                    cells.append(f"{mu:.1f}")
                elif m == "seconds_per_slide":
                    cells.append(f"{mu:.3f}")
                else:
                    cells.append(f"{mu:.3f} ± {sd:.3f}")
            lines.append(f"| {r.agent} | {r.budget:.0%} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({k: v for k, v in asdict(self).items()}, f, indent=2, allow_nan=True)
        os.replace(tmp, path)
        return path


def as_agent(agent: Any, seed: int = 0) -> tuple[str, Callable[[dict, dict], int]]:
    """Normalise an agent argument to ``(name, callable)``."""
    if isinstance(agent, str):
        if agent in BUDGET_FREE:
            return agent, Coverage()
        return agent, make_baseline(agent, seed=seed)
    if hasattr(agent, "predict"):
        model = agent

        def act(obs: dict, info: dict) -> int:
            action, _ = model.predict(
                obs, deterministic=True, action_masks=np.asarray(obs["action_mask"]).astype(bool)
            )
            return int(np.asarray(action).reshape(-1)[0])

        return type(model).__name__.lower(), act
    if callable(agent):
        return getattr(agent, "__name__", type(agent).__name__), agent
    raise TypeError(
        f"agent must be an SB3 model, a baseline name or a callable (obs, info) -> action; got {agent!r}"
    )


def run_split(
    agent: Callable[[dict, dict], int],
    env: gym.Env,
    slide_ids: Sequence[str],
    *,
    seed: int = 0,
    zero_steps: bool = False,
    progress: bool = False,
    desc: str = "",
) -> dict[str, float]:
    """Run one episode per slide and return the protocol's metrics for this seed."""
    probs, labels, zooms, hits, seconds = [], [], [], [], []
    for i, slide_id in enumerate(tqdm(slide_ids, desc=desc, disable=not progress, leave=False)):
        t0 = time.perf_counter()
        obs, info = env.reset(seed=seed + i, options={"slide_id": slide_id})
        if hasattr(agent, "reset"):
            agent.reset(env.unwrapped, obs, info)
        done = zero_steps
        n_hit = n_known = 0
        while not done:
            obs, _, terminated, truncated, info = env.step(agent(obs, info))
            if info.get("hit_tumour") is not None:
                n_known += 1
                n_hit += int(info["hit_tumour"])
            done = terminated or truncated
        seconds.append(time.perf_counter() - t0)
        probs.append(np.asarray(info["probability"], dtype=np.float64))
        labels.append(int(info["label"]))
        zooms.append(int(info["zooms"]))
        hits.append(n_hit / n_known if n_known else math.nan)
    out = classification_metrics(np.stack(probs), np.asarray(labels))
    out["zooms"] = float(np.mean(zooms))
    out["tumour_hits"] = float(np.nanmean(hits)) if not np.all(np.isnan(hits)) else math.nan
    out["seconds_per_slide"] = float(np.mean(seconds))
    return out


def evaluate(
    agents: Sequence[Any] | Any,
    *,
    env_id: str = "WSIZoom-v0",
    dataset: str = "synth-c16",
    split: str = "test",
    fold: int = 0,
    budgets: Sequence[float] = (0.1, 0.2),
    seeds: Sequence[int] = (0, 1, 2),
    env_kwargs: dict[str, Any] | None = None,
    max_slides: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Score agents on every slide of ``split`` at each budget and seed (see the module docstring).

    ``no-zoom`` and ``full-hafed`` are evaluated once, at budget 0% and 100%.
    """
    agents = list(agents) if isinstance(agents, (list, tuple)) else [agents]
    rows: list[EvalRow] = []
    for agent_spec in agents:
        name = agent_spec if isinstance(agent_spec, str) else as_agent(agent_spec)[0]
        agent_budgets = [BUDGET_FREE[name]] if name in BUDGET_FREE else list(budgets)
        for budget in agent_budgets:
            env = gym.make(
                env_id,
                dataset=dataset,
                split=split,
                fold=fold,
                budget=max(budget, 1e-9),
                **(env_kwargs or {}),
            )
            slide_ids = env.unwrapped.slide_ids[:max_slides] if max_slides else env.unwrapped.slide_ids
            per_seed = []
            for seed in seeds:
                _, agent = as_agent(agent_spec, seed=seed)
                per_seed.append(
                    run_split(
                        agent,
                        env,
                        slide_ids,
                        seed=seed,
                        zero_steps=name == "no-zoom",
                        progress=progress,
                        desc=f"{name} @ {budget:.0%} seed {seed}",
                    )
                )
            env.close()
            keys = per_seed[0].keys()
            mean = {k: float(np.mean([s[k] for s in per_seed])) for k in keys}
            std = {k: float(np.std([s[k] for s in per_seed])) for k in keys}
            rows.append(EvalRow(name, float(budget), mean, std, per_seed))
    return EvalReport(dataset=str(dataset), split=split, env_id=env_id, rows=rows)
