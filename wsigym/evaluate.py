"""The evaluation protocol: any agent, on every slide of a split, at fixed zoom budgets, over seeds.

An agent is one of:

- a stable-baselines3 / sb3-contrib model (anything with ``predict(obs, deterministic=..., action_masks=...)``;
  a MaskablePPO with :class:`~wsigym.agents.policy.PatchPolicy` runs as a
  :class:`~wsigym.agents.saved_policy.PolicyAgent`, so it works on any padding); actions are always masked;
- a baseline name: ``random``, ``attention-topk``, ``coverage``, ``oracle`` (see :mod:`wsigym.agents.baselines`),
  or the two budget extremes ``no-zoom`` (low-res state only) and ``full-hafed`` (every patch zoomed);
- a saved policy folder or a registered name / Hub repo (``"ppo-WSIZoom-v0"``), loaded with
  :func:`~wsigym.agents.saved_policy.load_policy`;
- any callable ``agent(obs, info) -> action`` (optionally with ``reset(env, obs, info)``), so
  agents need not use SB3.

``full-hafed`` is scored with one HAFED forward pass on ``V`` per slide: after every patch is zoomed
the state is ``V`` whatever the order, so stepping ``N`` times would give the same prediction.

**Environments.** By default the protocol builds one ``gym.make(env_id, budget=b, ...)`` per budget,
with ``illegal_action="raise"`` (an agent that sends an illegal action is a bug the protocol must
show, not remap). ``env=`` takes an existing environment instead (evaluated at its own budget; it is
not closed) or a factory ``env(budget) -> gym.Env`` (called once per budget; those are closed).

**Slides.** Every slide of the split, or ``slides=[id, ...]`` (in the given order), or
``sample=K`` slides drawn without replacement with ``numpy.random.default_rng(sample_seed)`` (in
split order), or the first ``max_slides``.

**Jobs and backends.** The protocol is a list of independent jobs, one per (agent, budget, seed):
each runs every selected slide once with an agent built for that job (a baseline name or a policy is
built afresh with the job's seed, so a cell never depends on which cells ran before it; an agent given
as an object is used as given, and on Ray each task gets its own copy, so such an agent must not carry
state from one episode to the next except through ``reset``). ``backend="local"`` runs the jobs one
after another here; ``backend="ray"`` runs one Ray task per job
(:mod:`wsigym.distributed.evaluation`) with the same results, timings aside.

Every slide is visited once per (budget, seed) in order (an agent whose
``deterministic`` attribute is True, e.g. the greedy policy and the ranked baselines, is run for the
first seed only and its result repeated: with the slide fixed, its episode does not depend on the seed)
(``reset(options={"slide_id": ...})``). The prediction of an episode is HAFED's class probability
on the final state (``info["probability"]``). Reported per budget, mean +- std over seeds:
accuracy, AUC, binary F1 (class 1), ECE, mean zooms per slide, the fraction of zooms that hit
tumour (when ground truth exists) and wall time per slide.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

import wsigym  # noqa: F401  (registers the environments)
from wsigym.agents.baselines import BASELINES, Coverage, make_baseline
from wsigym.envs.options import DEFAULT_DATASET, ZoomOptions
from wsigym.io import atomic_write_json
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
    slides: int = 0
    seeds: list[int] = field(default_factory=list)

    def to_markdown(self) -> str:
        """A Markdown table: one row per (agent, budget), cells ``mean ± std`` over seeds."""
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

    def caption(self) -> str:
        """One line naming the dataset, split, slides, seeds and environment of the table."""
        return (
            f"{self.dataset}, {self.split} split ({self.slides} slides), {self.env_id}, "
            f"mean ± std over seeds {self.seeds}; tumour hits = fraction of zooms on patches with tumour."
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the report as strict JSON atomically (NaN metrics as ``null``, :mod:`wsigym.io`)."""
        return atomic_write_json(path, asdict(self))

    @classmethod
    def from_json(cls, path: str | Path) -> EvalReport:
        """Read a report written by :meth:`to_json`.

        Raises:
            ValueError: naming the file, when it is not such a report.
        """
        try:
            data = json.loads(Path(path).read_text())
            rows = [EvalRow(**_nan_for_null(row)) for row in data.pop("rows")]
            return cls(**data, rows=rows)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not an evaluation report ({type(e).__name__}: {e})") from None


def _nan_for_null(value: Any) -> Any:
    """A report row read from JSON with ``null`` metric values (written for NaN) back to NaN."""
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return math.nan if value is None else value


def _model_agent(model: Any) -> Callable[[dict, dict], int]:
    from wsigym.agents.policy import PatchPolicy
    from wsigym.agents.saved_policy import PolicyAgent

    policy = getattr(model, "policy", None)
    if isinstance(policy, PatchPolicy):
        return PolicyAgent(policy)

    def act(obs: dict, info: dict) -> int:
        action, _ = model.predict(
            obs, deterministic=True, action_masks=np.asarray(obs["action_mask"]).astype(bool)
        )
        return int(np.asarray(action).reshape(-1)[0])

    act.deterministic = True  # type: ignore[attr-defined]  (greedy)
    return act


def as_agent(agent: Any, seed: int = 0) -> tuple[str, Callable[[dict, dict], int]]:
    """Normalise an agent argument to ``(name, callable)`` (see the module docstring).

    Raises:
        ValueError: an unknown name that is neither a baseline nor a loadable policy.
        TypeError: anything else that is not an agent.
    """
    if isinstance(agent, (str, Path)):
        name = str(agent)
        if name in BUDGET_FREE:
            return name, Coverage()
        if name in BASELINES:
            return name, make_baseline(name, seed=seed)
        from wsigym.agents.saved_policy import POLICY_CONFIG, load_policy

        path = Path(name)
        if path.is_dir() and not (path / POLICY_CONFIG).is_file():
            raise ValueError(f"{path}: not a policy folder ({POLICY_CONFIG} missing)")
        if path.is_dir() or "/" in name or name.startswith("ppo-"):
            label = "ppo" if path.is_dir() else name.split("/")[-1]
            return label, load_policy(name)
        raise ValueError(
            f"unknown agent {name!r}: use a baseline {sorted(BASELINES)}, {sorted(BUDGET_FREE)}, "
            "a policy folder, a registered name / Hub repo of a policy, an SB3 model or a callable"
        )
    if hasattr(agent, "predict"):
        return type(agent).__name__.lower(), _model_agent(agent)
    if callable(agent):
        return getattr(agent, "name", getattr(agent, "__name__", type(agent).__name__)), agent
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
    """Run one episode per slide (``reset(seed=seed + i, options={"slide_id": ...})``) and return the
    protocol's metrics for this seed: :func:`zoo.metrics.classification_metrics` of the final
    ``info["probability"]`` plus ``zooms`` (mean per slide), ``tumour_hits`` (mean over slides of the
    fraction of zooms with ``info["hit_tumour"]``; NaN without ground truth), ``tumour_reached`` (the
    fraction of tumour slides, label 1, with at least one such zoom; NaN without ground truth or tumour
    slides) and ``seconds_per_slide`` (wall time of the episode, agent and environment).

    Raises:
        ValueError: the agent returned an illegal action (the environment's message).
    """
    probs, labels, zooms, hits, reached, seconds = [], [], [], [], [], []
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
        reached.append(float(n_hit > 0) if n_known and labels[-1] == 1 else math.nan)
    return _with_zoom_metrics(
        classification_metrics(np.stack(probs), np.asarray(labels)), zooms, hits, reached, seconds
    )


def _nanmean_or_nan(values: Sequence[float]) -> float:
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan


def _with_zoom_metrics(
    out: dict[str, float],
    zooms: Sequence[int],
    hits: Sequence[float],
    reached: Sequence[float],
    seconds: Sequence[float],
) -> dict[str, float]:
    """``out`` plus the per-slide zoom metrics (:func:`run_split`), averaged over the slides that have them."""
    out["zooms"] = float(np.mean(zooms))
    out["tumour_hits"] = _nanmean_or_nan(hits)
    out["tumour_reached"] = _nanmean_or_nan(reached)
    out["seconds_per_slide"] = float(np.mean(seconds))
    return out


@torch.no_grad()
def full_hafed(env: gym.Env, slide_ids: Sequence[str], progress: bool = False) -> dict[str, float]:
    """HAFED on ``V`` (every patch zoomed) for each slide: the 100% budget reference, same metrics."""
    base = env.unwrapped
    source, hafed = base.source, base.hafed
    probs, labels, zooms, hits, reached, seconds = [], [], [], [], [], []
    for slide_id in tqdm(slide_ids, desc="full-hafed", disable=not progress, leave=False):
        t0 = time.perf_counter()
        k = source.index_of(str(slide_id))
        rows = source.rows(k)
        out = hafed.classify(source.v[rows][None])
        probs.append(torch.softmax(out["logits"][0].float(), -1).cpu().numpy().astype(np.float64))
        seconds.append(time.perf_counter() - t0)
        labels.append(int(source.labels[k]))
        zooms.append(int(source.n_list[k]))
        truth = source.tumour[rows].cpu().numpy()
        known = bool(np.isfinite(truth).all())
        hits.append(float(np.mean(truth > 0)) if known else math.nan)
        reached.append(float((truth > 0).any()) if known and labels[-1] == 1 else math.nan)
    return _with_zoom_metrics(
        classification_metrics(np.stack(probs), np.asarray(labels)), zooms, hits, reached, seconds
    )


@dataclass
class EvalJob:
    """One job of the protocol: ``agent`` on ``slide_ids`` of the environment of ``budget``, at ``seed``.

    ``kind`` is ``"episodes"`` (:func:`run_split`), ``"no-zoom"`` (episodes of zero steps) or
    ``"full-hafed"`` (:func:`full_hafed`); ``desc`` labels its progress bar.
    """

    agent: Callable[[dict, dict], int] | None
    budget: float
    seed: int
    slide_ids: list[str]
    kind: str = "episodes"
    desc: str = ""


def run_job(job: EvalJob, env: gym.Env, progress: bool = False) -> dict[str, float]:
    """The metrics of one job (:func:`run_split` or :func:`full_hafed`) on ``env``."""
    if job.kind == "full-hafed":
        return full_hafed(env, job.slide_ids, progress=progress)
    return run_split(
        job.agent,  # type: ignore[arg-type]
        env,
        job.slide_ids,
        seed=job.seed,
        zero_steps=job.kind == "no-zoom",
        progress=progress,
        desc=job.desc,
    )


def run_jobs_locally(
    jobs: Sequence[EvalJob], envs: dict[float, gym.Env], progress: bool = True
) -> list[dict]:
    """``backend="local"``: the jobs one after another in this process, on ``envs[job.budget]``."""
    return [run_job(job, envs[job.budget], progress=progress) for job in jobs]


def select_slides(
    ids: Sequence[str],
    *,
    slides: Sequence[str] | None = None,
    sample: int | None = None,
    sample_seed: int = 0,
    max_slides: int | None = None,
) -> list[str]:
    """The slides an evaluation visits (module docstring, Slides).

    Raises:
        ValueError: for unknown ids, a sample larger than the split, or more than one selection.
    """
    ids = [str(i) for i in ids]
    given = [name for name, v in (("slides", slides), ("sample", sample), ("max_slides", max_slides)) if v]
    if len(given) > 1:
        raise ValueError(f"give at most one of slides=, sample=, max_slides=; got {', '.join(given)}")
    if slides:
        unknown = [str(s) for s in slides if str(s) not in set(ids)]
        if unknown:
            raise ValueError(f"slides: {unknown[:5]} not in the split ({len(ids)} slides, e.g. {ids[:3]})")
        return [str(s) for s in slides]
    if sample:
        if isinstance(sample, bool) or not 0 < int(sample) <= len(ids):
            raise ValueError(f"sample must be in [1, {len(ids)}] (the split's slides), got {sample!r}")
        picked = np.random.default_rng(sample_seed).choice(len(ids), size=int(sample), replace=False)
        return [ids[i] for i in sorted(picked)]
    return list(ids[:max_slides]) if max_slides else list(ids)


def evaluate(
    agents: Sequence[Any] | Any,
    *,
    env: gym.Env | Callable[[float], gym.Env] | None = None,
    slides: Sequence[str] | None = None,
    sample: int | None = None,
    sample_seed: int = 0,
    env_id: str = "WSIZoom-v0",
    dataset: Any = DEFAULT_DATASET,
    split: str = "test",
    fold: int = ZoomOptions.fold,
    budgets: Sequence[float] = (0.1, 0.2),
    seeds: Sequence[int] = (0, 1, 2),
    env_kwargs: dict[str, Any] | None = None,
    max_slides: int | None = None,
    names: Sequence[str] | None = None,
    progress: bool = True,
    backend: str = "local",
) -> EvalReport:
    """Score agents on every slide of ``split`` at each budget and seed (see the module docstring).

    Args:
        agents: one agent or a list (SB3 models, names, policy folders, callables).
        env_id: ``WSIZoom-v0`` or an ablation (``WSIZoomGlobal-v0``, ``WSIZoomNoUpdate-v0``).
        dataset: registered name, folder, ``SlideDataset`` or live slides
            (:class:`~wsigym.envs.live_source.LiveSlides`).
        budgets: zoom budgets as fractions of ``N``.
        seeds: episode seeds; deterministic agents give std 0 (the random baseline does not).
        env_kwargs: further environment arguments (``hafed``, ``tsu``, ``reward``...).
        max_slides: only the first ``max_slides`` slides of the split (quick runs; say so when reporting).
        names: row labels, one per agent (default: the agent's name).
        env: an environment (its budget, split and dataset are used; ``budgets``, ``dataset``,
            ``split``, ``fold``, ``env_id`` and ``env_kwargs`` are ignored) or a factory
            ``env(budget) -> gym.Env``.
        slides, sample, sample_seed: which slides (module docstring, Slides).
        backend: ``"local"`` or ``"ray"`` (module docstring, Jobs and backends; Ray joins the cluster
            :func:`wsigym.distributed.cluster.connect` gives: ``$RAY_ADDRESS`` or a local one).

    ``no-zoom`` and ``full-hafed`` are evaluated once, at budget 0% and 100%.
    """
    agents = list(agents) if isinstance(agents, (list, tuple)) else [agents]
    if names is not None and len(names) != len(agents):
        raise ValueError(f"names: expected {len(agents)} labels, got {len(names)}")
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    if backend == "ray" and env is not None:
        raise ValueError(
            "backend='ray' builds its environments from env_id/dataset/env_kwargs; env= is local only"
        )
    rows: list[EvalRow] = []
    envs: dict[float, gym.Env] = {}
    owned: list[gym.Env] = []
    # Agents built here (baseline names, policies, SB3 models) read each observation before the next step and
    # keep none of it, so the environments may hand out their state buffer without copying it; a caller's own
    # callable may keep observations, so with one the copies stay (``env_kwargs`` may set ``copy_obs`` either way).
    shares = all(isinstance(a, (str, Path)) or hasattr(a, "predict") for a in agents)
    kwargs = {
        "progress": progress,
        "illegal_action": "raise",
        **({"copy_obs": False} if shares else {}),
        **(env_kwargs or {}),
    }
    if isinstance(env, gym.Env):
        base = env.unwrapped
        budgets = (float(base.config.budget),)
        envs[budgets[0]] = env
        dataset, split = slides_of(base)
        env_id = env.spec.id if env.spec is not None else type(base).__name__
    elif env is not None and not callable(env):
        raise TypeError(f"env must be a gym.Env or a factory env(budget) -> gym.Env, got {env!r}")

    def env_for(budget: float) -> gym.Env:
        if budget not in envs:
            if env is not None:
                made = env(budget)
                if not isinstance(made, gym.Env):
                    raise TypeError(f"the env factory returned {made!r} for budget {budget}, not a gym.Env")
            else:
                made = gym.make(
                    env_id,
                    dataset=dataset,
                    split=split,
                    fold=fold,
                    budget=budget,
                    # the checker warns once that shared observations are shared (copy_obs=False, above)
                    disable_env_checker=kwargs.get("copy_obs", True) is False,
                    **kwargs,
                )
            envs[budget] = made
            owned.append(made)
        return envs[budget]

    jobs: list[EvalJob] = []
    plan: list[tuple[str, float, list[int]]] = []  # (row label, row budget, job index of each seed)
    try:
        for i, agent_spec in enumerate(agents):
            name = agent_spec if isinstance(agent_spec, str) and agent_spec in BUDGET_FREE else None
            label, built = as_agent(agent_spec, seed=seeds[0])
            label = names[i] if names is not None else label
            agent_budgets = [BUDGET_FREE[name]] if name else list(budgets)
            for budget in agent_budgets:
                env_budget = min(budgets) if name else budget
                slide_ids = select_slides(
                    env_for(env_budget).unwrapped.slide_ids,
                    slides=slides,
                    sample=sample,
                    sample_seed=sample_seed,
                    max_slides=max_slides,
                )
                index: list[int] = []
                for seed in seeds:
                    if index and (name == "full-hafed" or getattr(built, "deterministic", False)):
                        index.append(index[0])  # same slides, same actions: identical
                        continue
                    if name == "full-hafed" or getattr(built, "deterministic", False):
                        agent = None if name == "full-hafed" else built  # no state that depends on history
                    else:
                        agent = as_agent(agent_spec, seed=seed)[1]  # fresh: a cell is its own random stream
                    desc = f"{label} @ {budget:.0%} seed {seed}"
                    jobs.append(EvalJob(agent, env_budget, seed, slide_ids, name or "episodes", desc))
                    index.append(len(jobs) - 1)
                plan.append((label, float(budget), index))
        if backend == "local":
            results = run_jobs_locally(jobs, envs, progress=progress)
        else:
            from wsigym.distributed.evaluation import run_jobs_ray

            results = run_jobs_ray(jobs, envs, run_job, progress=progress)
        for label, budget, index in plan:
            per_seed = [dict(results[j]) for j in index]
            keys = per_seed[0].keys()
            mean = {k: _nanmean([s[k] for s in per_seed]) for k in keys}
            std = {k: _nanstd([s[k] for s in per_seed]) for k in keys}
            rows.append(EvalRow(label, budget, mean, std, per_seed))
    finally:
        for made in owned:
            made.close()
    if env is not None and not isinstance(env, gym.Env) and envs:
        first = next(iter(envs.values()))
        dataset, split = slides_of(first.unwrapped)
        env_id = first.spec.id if first.spec is not None else type(first.unwrapped).__name__
    return EvalReport(
        dataset=str(getattr(dataset, "name", dataset)),
        split=split,
        env_id=env_id,
        rows=rows,
        slides=len(slide_ids) if rows else 0,
        seeds=list(seeds),
    )


def slides_of(env: Any) -> tuple[Any, str]:
    """The dataset and split a report names for a zoom environment (live slides: ``LiveSlides``, ``"live"``)."""
    options = getattr(env, "options", None)
    if options is not None and options.live:
        return options.dataset, "live"
    return env.source.dataset, env.source.split


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan


def _nanstd(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanstd(arr)) if np.isfinite(arr).any() else math.nan
