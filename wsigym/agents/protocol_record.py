r"""The protocol's machine-readable record: ``results/<dataset>/protocol.json`` and the README table made from it.

The reproduction protocol (issue: one policy per recipe, reward, update rule, budget and training seed,
each evaluated on the full test split) produces one :class:`TrainedRun` per trained policy and budget.
:func:`build_protocol` groups them by ``(agent, recipe, reward, update, budget)`` and averages over the
training seeds; the record is

.. code-block:: text

    {"dataset": ..., "split": ..., "metric_note": ...,
     "rows": [{"agent", "recipe", "reward", "update", "budget", "train_seeds": [..], "compute",
               "accuracy": {"mean", "std"}, "auc": {"mean", "std"}, "f1": {"mean", "std"}}, ...],
     "full_hafed": {"accuracy": {"mean", "std"}, "auc": {...}, "f1": {...}, "train_seeds": [..]},
     "published": [{"method", "budget", "accuracy", "auc", "f1", "dataset", "source"}, ...]}

``std`` is the population standard deviation over training seeds (``ddof=0``, as
:mod:`wsigym.evaluate` uses over episode seeds); 0 for one seed. ``published`` rows are SASHA's
CAMELYON16 numbers, each with the ``source`` it comes from (the official README, or a secondary
source not checked against the paper: "unverified"); they are a different dataset and never mixed
into ``rows``. :func:`protocol_markdown` renders the README table from the record (never typed by
hand) and :func:`write_protocol` writes it atomically, optionally replacing the README section
``<!-- results:<key> -->`` (:mod:`wsigym.readme_sections`).

CLI: ``wsigym protocol RUNS.json --dataset synth-c16 [--full-hafed ACC ...] [--readme README.md]``
where ``RUNS.json`` is a list of :class:`TrainedRun` objects as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsigym.errors import DataError
from wsigym.io import atomic_write_json, atomic_write_text
from wsigym.readme_sections import replace_section

#: The metrics a protocol row carries (``zoo.metrics.classification_metrics`` keys; F1 is binary, class 1).
PROTOCOL_METRICS = ("accuracy", "auc", "f1")

_SASHA_README = "SASHA README (github.com/coglabiisc/SASHA), mean ± std as published"
_SECONDARY = "secondary source: attributed to the SASHA paper (arXiv 2507.05077), not checked against its tables; unverified"

#: SASHA's published CAMELYON16 numbers (a different dataset: context only), each with its source.
PUBLISHED_C16: tuple[dict[str, str], ...] = (
    {"method": "HAFED (SASHA paper)", "budget": "100%", "accuracy": ".963 ± .008", "auc": ".980 ± .003",
     "f1": ".951 ± .011", "source": _SASHA_README},
    {"method": "SASHA-0.1", "budget": "10%", "accuracy": ".901 ± .021", "auc": ".918 ± .014",
     "f1": ".856 ± .031", "source": _SASHA_README},
    {"method": "SASHA-0.2", "budget": "20%", "accuracy": ".953 ± .017", "auc": ".979 ± .008",
     "f1": ".937 ± .024", "source": _SASHA_README},
    {"method": "RLogist-0.1 (as reported by SASHA)", "budget": "10%", "accuracy": ".824", "auc": ".829",
     "f1": "n/a", "source": _SECONDARY},
    {"method": "RLogist-0.2 (as reported by SASHA)", "budget": "20%", "accuracy": ".862", "auc": ".879",
     "f1": "n/a", "source": _SECONDARY},
    {"method": "random policy (SASHA ablation)", "budget": "20%", "accuracy": ".516", "auc": ".550",
     "f1": ".553", "source": _SECONDARY},
    {"method": "global update instead of TSU (SASHA ablation)", "budget": "20%", "accuracy": ".837",
     "auc": ".824", "f1": ".779", "source": _SECONDARY},
)  # fmt: skip


@dataclass(frozen=True)
class TrainedRun:
    """One trained policy (or baseline) at one budget, evaluated once on the full test split.

    Attributes:
        agent: the row label (e.g. ``"ppo"``, ``"random"``, ``"attention-topk"``).
        recipe: the training recipe (``"sasha"``, ``"sasha-sb3"``, ...), None for an untrained agent.
        reward: the environment's ``reward`` the policy was trained with, None for an untrained agent.
        update: the state-update rule of the environment it was trained and evaluated on.
        budget: zoom budget, a fraction in ``(0, 1]``.
        train_seed: the training seed (None for an untrained agent).
        metrics: at least :data:`PROTOCOL_METRICS` -> value.
        compute: what the training cost, in words (e.g. ``"15 passes x 243 slides x 2 episodes"``).
    """

    agent: str
    recipe: str | None
    reward: str | None
    update: str
    budget: float
    train_seed: int | None
    metrics: Mapping[str, float]
    compute: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "runs") -> TrainedRun:
        """From JSON; raises :class:`~wsigym.errors.DataError` naming ``source`` and the key."""
        required = ("agent", "update", "budget", "metrics")
        for key in required:
            if key not in data:
                raise DataError(source, f"a run lacks the key {key!r} (needs {', '.join(required)})")
        metrics = data["metrics"]
        missing = [m for m in PROTOCOL_METRICS if not isinstance(metrics, Mapping) or m not in metrics]
        if missing:
            raise DataError(
                source, f"run {data['agent']!r}: metrics lack {missing} (needs {PROTOCOL_METRICS})"
            )
        budget = data["budget"]
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < float(budget) <= 1.0:
            raise DataError(
                source, f"run {data['agent']!r}: budget must be a fraction in (0, 1], got {budget!r}"
            )
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise DataError(source, f"run {data['agent']!r}: unknown keys {sorted(unknown)}")
        return cls(
            agent=str(data["agent"]),
            recipe=data.get("recipe"),
            reward=data.get("reward"),
            update=str(data["update"]),
            budget=float(budget),
            train_seed=data.get("train_seed"),
            metrics={m: float(metrics[m]) for m in PROTOCOL_METRICS},
            compute=data.get("compute"),
        )


@dataclass
class FullHafed:
    """Full-resolution HAFED on the same split, one value per training seed of HAFED (or one)."""

    metrics: list[Mapping[str, float]]
    train_seeds: list[int] = field(default_factory=list)


def runs_from_report(
    report: Any,
    *,
    recipe: str | None,
    reward: str | None,
    update: str,
    train_seed: int | None,
    compute: str | None = None,
    include_baselines: bool = False,
) -> tuple[list[TrainedRun], list[Mapping[str, float]]]:
    """Split a :class:`wsigym.evaluate.EvalReport` of one trained policy into runs.

    Rows of trained agents (names that are not :data:`wsigym.agents.baselines.BASELINES`) become one
    :class:`TrainedRun` each, with the row's mean over episode seeds and the given ``recipe``,
    ``reward``, ``train_seed`` and ``compute``. With ``include_baselines`` (do it for one report only),
    a baseline row becomes one run per episode seed, ``train_seed`` being that episode seed (an
    untrained agent has no training seed; its spread is over episodes). ``full-hafed`` rows are
    returned apart; ``no-zoom`` rows are dropped. Returns ``(runs, full_hafed_metrics)``.
    """
    from wsigym.agents.baselines import BASELINES

    runs: list[TrainedRun] = []
    full: list[Mapping[str, float]] = []
    for row in report.rows:
        if row.agent == "full-hafed":
            full.append({m: float(row.mean[m]) for m in PROTOCOL_METRICS})
            continue
        if row.agent == "no-zoom":
            continue
        if row.agent not in BASELINES:
            metrics = {m: float(row.mean[m]) for m in PROTOCOL_METRICS}
            runs.append(
                TrainedRun(row.agent, recipe, reward, update, float(row.budget), train_seed, metrics, compute)
            )
        elif include_baselines:
            for seed, values in zip(report.seeds, row.per_seed, strict=True):
                metrics = {m: float(values[m]) for m in PROTOCOL_METRICS}
                runs.append(TrainedRun(row.agent, None, None, update, float(row.budget), seed, metrics))
    return runs, full


def _summary(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def build_protocol(
    runs: Sequence[TrainedRun],
    full_hafed: FullHafed,
    *,
    dataset: str,
    split: str = "test",
    published: Sequence[Mapping[str, str]] = PUBLISHED_C16,
    published_dataset: str = "CAMELYON16",
) -> dict[str, Any]:
    """The protocol record (module docstring): rows in order of first appearance, mean/std over seeds.

    A row is one configuration: agent, recipe, reward, update rule, budget and ``compute`` (so a run at
    SASHA's scale and a shorter ablation run of the same rule are two rows).

    Raises:
        ValueError: for no runs, no full-HAFED value, or one training seed listed twice in a row.
    """
    if not runs:
        raise ValueError("build_protocol: no runs")
    if not full_hafed.metrics:
        raise ValueError("build_protocol: full_hafed needs at least one evaluation")
    groups: dict[tuple[Any, ...], list[TrainedRun]] = {}
    for run in runs:  # one row per configuration, training scale included (main and ablation runs)
        key = (run.agent, run.recipe, run.reward, run.update, run.budget, run.compute)
        groups.setdefault(key, []).append(run)
    rows = []
    for (agent, recipe, reward, update, budget, compute), members in groups.items():
        seeds = [r.train_seed for r in members]
        if len(set(seeds)) != len(seeds):
            raise ValueError(
                f"build_protocol: {agent!r} ({recipe}, {reward}, {update}, budget {budget}) lists a training seed "
                f"twice: {seeds}"
            )
        row: dict[str, Any] = {
            "agent": agent,
            "recipe": recipe,
            "reward": reward,
            "update": update,
            "budget": budget,
            "train_seeds": seeds,
            "compute": compute,
        }
        for m in PROTOCOL_METRICS:
            row[m] = _summary([r.metrics[m] for r in members])
        rows.append(row)
    hafed = {
        m: _summary([x[m] for x in full_hafed.metrics])
        for m in PROTOCOL_METRICS
        if all(m in x for x in full_hafed.metrics)
    }
    if "accuracy" not in hafed:
        raise ValueError("build_protocol: full_hafed metrics need 'accuracy'")
    hafed["train_seeds"] = list(full_hafed.train_seeds)
    return {
        "dataset": dataset,
        "split": split,
        "metric_note": "mean ± std (ddof=0) over training seeds; F1 is the binary F1 of class 1",
        "rows": rows,
        "full_hafed": hafed,
        "published": [{**p, "dataset": published_dataset} for p in published],
    }


def _cell(summary: Mapping[str, float]) -> str:
    mu, sd = summary["mean"], summary["std"]
    return "n/a" if math.isnan(mu) else f"{mu:.3f} ± {sd:.3f}"


def protocol_markdown(protocol: Mapping[str, Any], *, published: bool = True) -> str:
    """The table of a protocol record: the measured rows, full HAFED, then (``published``) the published
    rows of another dataset, with their sources."""
    hafed_acc = protocol["full_hafed"]["accuracy"]["mean"]
    lines = [
        f"**{protocol['dataset']}** ({protocol['split']} split; {protocol['metric_note']}; "
        "generated from `protocol.json`, not typed by hand.)",
        "",
        "| agent | recipe | reward | update | budget | seeds | accuracy | % of full HAFED | AUC | F1 (binary) | compute |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in protocol["rows"]:
        share = r["accuracy"]["mean"] / hafed_acc if hafed_acc else math.nan
        lines.append(
            f"| {r['agent']} | {r['recipe'] or '-'} | {r['reward'] or '-'} | {r['update']} | {r['budget']:.0%} | "
            f"{len(r['train_seeds'])} | {_cell(r['accuracy'])} | {share:.1%} | {_cell(r['auc'])} | "
            f"{_cell(r['f1'])} | {r['compute'] or '-'} |"
        )
    h = protocol["full_hafed"]
    cells = [_cell(h[m]) if m in h else "n/a" for m in PROTOCOL_METRICS]
    lines.append(f"| full HAFED | - | - | - | 100% | {max(1, len(h['train_seeds']))} | {cells[0]} | 100% | "
                 f"{cells[1]} | {cells[2]} | - |")  # fmt: skip
    rows = (protocol.get("published") or []) if published else []
    if rows:
        lines += [
            "",
            f"For context only, **a different dataset** ({rows[0]['dataset']}, published numbers, not "
            "produced here), with the source of each number:",
            "",
            "| method (published) | budget | accuracy | AUC | F1 (binary) | source |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['method']} | {p['budget']} | {p['accuracy']} | {p['auc']} | {p['f1']} | {p['source']} |"
            for p in rows
        ]
    return "\n".join(lines) + "\n"


def write_protocol(
    protocol: Mapping[str, Any],
    results_dir: str | Path = "results",
    *,
    readme: str | Path | None = None,
    readme_key: str | None = None,
) -> Path:
    """Write ``<results_dir>/<dataset>/protocol.json`` (and ``protocol.md``, with the published rows)
    atomically; with ``readme``, replace its section ``<!-- results:<readme_key or dataset> -->`` by the
    measured rows of :func:`protocol_markdown` and a link to ``protocol.md`` for the published ones (the README
    shows them once, in the evaluation table).

    Returns:
        the path of ``protocol.json``.
    """
    folder = Path(results_dir) / str(protocol["dataset"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "protocol.json"
    atomic_write_json(path, protocol)
    text = protocol_markdown(protocol)
    atomic_write_text(folder / "protocol.md", text)
    if readme is not None:
        section = protocol_markdown(protocol, published=False)
        if protocol.get("published"):
            link = Path(os.path.relpath(folder / "protocol.md", Path(readme).resolve().parent)).as_posix()
            section += (
                f"\nPublished numbers of another dataset, with their sources: [`protocol.md`]({link}).\n"
            )
        replace_section(readme, readme_key or str(protocol["dataset"]), section)
    return path


def load_runs(path: str | Path) -> list[TrainedRun]:
    """Read a JSON list of runs (:meth:`TrainedRun.from_dict`); errors name the file."""
    source = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise DataError(source, f"not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise DataError(source, f"expected a JSON list of runs, got {type(data).__name__}")
    return [
        TrainedRun.from_dict(item, source) if isinstance(item, Mapping) else _not_a_run(source, item)
        for item in data
    ]


def _not_a_run(source: str, item: Any) -> TrainedRun:
    raise DataError(source, f"every run must be a JSON object, got {type(item).__name__}")


def add_subcommand(sub: Any) -> None:
    """``wsigym protocol RUNS.json --dataset NAME --full-hafed ACC [...]`` (module docstring)."""
    p = sub.add_parser(
        "protocol", help="write results/<dataset>/protocol.json and its README table from runs"
    )
    p.add_argument(
        "runs",
        help="JSON list of runs: {agent, recipe, reward, update, budget, train_seed, metrics, compute}",
    )
    p.add_argument(
        "--dataset", required=True, help="the dataset name (the folder under --results and README key)"
    )
    p.add_argument("--split", default="test")
    p.add_argument(
        "--full-hafed",
        required=True,
        help="JSON list of full-HAFED metric dicts ({accuracy, auc, f1}), one per HAFED training seed",
    )
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--readme", default=None, help="also replace <!-- results:DATASET --> in this README")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        hafed = json.loads(args.full_hafed)
    except json.JSONDecodeError as err:
        raise ValueError(f"--full-hafed: expected a JSON list of metric dicts ({err})") from None
    if not isinstance(hafed, list) or not all(isinstance(h, dict) and "accuracy" in h for h in hafed):
        raise ValueError("--full-hafed: expected a JSON list of dicts with at least 'accuracy'")
    protocol = build_protocol(load_runs(args.runs), FullHafed(hafed), dataset=args.dataset, split=args.split)
    print(f"wrote {write_protocol(protocol, args.results, readme=args.readme)}")
    return 0
