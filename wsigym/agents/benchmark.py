"""The full protocol in one call: the README's results table for a dataset (``wsigym evaluate --all``).

:func:`run_protocol` evaluates, on the test split at each budget and over seeds (:func:`wsigym.evaluate.evaluate`):

1. the trained policy (``ppo``) and every baseline (attention-top-k, coverage, random, oracle, no-zoom,
   full-resolution HAFED) on ``WSIZoom-v0`` (TSU);
2. the state-update ablation: the same policy (trained with the TSU) and attention-top-k on
   ``WSIZoom-v0`` (TSU), ``WSIZoomGlobal-v0`` (global update) and ``WSIZoomNoUpdate-v0`` (no update),
   at ``ablation_budgets`` (default: all budgets) on the first ``ablation_slides`` slides (default:
   the same slides as 1.). The global update runs the TSU MLP on every row at every step, so on CPU
   it costs about ``N`` times a TSU step; a subset keeps the protocol within minutes and is stated
   in the table's caption;

and writes ``results.md`` and ``results.json`` under ``out``. The Markdown ends with SASHA's published
CAMELYON16 numbers (the official SASHA README), labelled as a different dataset, for context only.
With ``readme``, the text between ``<!-- results:<dataset> -->`` and ``<!-- /results:<dataset> -->`` is
replaced (the markers must exist; nothing else in the file changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsigym.agents.protocol_record import PUBLISHED_C16
from wsigym.envs.options import DEFAULT_DATASET
from wsigym.evaluate import EvalReport, evaluate
from wsigym.io import atomic_write_json, atomic_write_text
from wsigym.readme_sections import replace_section

ABLATION_ENVS = {"TSU": "WSIZoom-v0", "global update": "WSIZoomGlobal-v0", "no update": "WSIZoomNoUpdate-v0"}


def full_protocol_agents(policy: str | None) -> tuple[list[Any], list[str]]:
    """The agents of the full protocol, in table order, and their labels."""
    agents: list[Any] = []
    names: list[str] = []
    if policy is not None:
        agents.append(policy)
        names.append("ppo")
    for name in ("attention-topk", "coverage", "random", "oracle", "no-zoom", "full-hafed"):
        agents.append(name)
        names.append(name)
    return agents, names


def published_table() -> str:
    """SASHA's published CAMELYON16 numbers as Markdown with each number's source (a different dataset:
    context only; :data:`wsigym.agents.protocol_record.PUBLISHED_C16`)."""
    lines = [
        "| method (CAMELYON16, published) | budget | accuracy | AUC | F1 (binary) | source |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['method']} | {p['budget']} | {p['accuracy']} | {p['auc']} | {p['f1']} | {p['source']} |"
        for p in PUBLISHED_C16
    ]
    return "\n".join(lines)


def _ablation_table(reports: dict[str, EvalReport]) -> str:
    lines = [
        "| agent | state update | budget | accuracy | AUC | F1 (binary) | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule, report in reports.items():
        for r in report.rows:
            cells = [f"{r.mean[m]:.3f} ± {r.std[m]:.3f}" for m in ("accuracy", "auc", "f1", "ece")]
            lines.append(f"| {r.agent} | {rule} | {r.budget:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class ProtocolResult:
    """What :func:`run_protocol` wrote: the Markdown of ``results.md``, the main report (every agent at
    every budget, the one a policy card is made from) and the ablation reports by state-update rule."""

    markdown: str
    main: EvalReport
    ablations: dict[str, EvalReport]


def run_protocol(
    *,
    policy: str | None,
    dataset: Any = DEFAULT_DATASET,
    split: str = "test",
    budgets: Sequence[float] = (0.1, 0.2),
    seeds: Sequence[int] = (0, 1, 2),
    env_kwargs: dict[str, Any] | None = None,
    max_slides: int | None = None,
    out: str | Path = "results",
    readme: str | Path | None = None,
    ablation: bool = True,
    ablation_budgets: Sequence[float] | None = None,
    ablation_slides: int | None = None,
    progress: bool = True,
    backend: str = "local",
) -> ProtocolResult:
    """Run the full protocol (module docstring): the Markdown written to ``out/results.md`` and the reports.

    ``backend`` is :func:`~wsigym.evaluate.evaluate`'s (``"ray"``: one Ray task per agent, budget, seed).

    ``results.md``/``results.json`` are written once the main table is done (so a long ablation cannot
    lose it) and again, complete, at the end.
    """
    agents, names = full_protocol_agents(policy)
    main = evaluate(
        agents,
        env_id="WSIZoom-v0",
        dataset=dataset,
        split=split,
        budgets=budgets,
        seeds=seeds,
        env_kwargs=env_kwargs,
        max_slides=max_slides,
        names=names,
        progress=progress,
        backend=backend,
    )
    _write(main, {}, out, readme=None)
    ablations: dict[str, EvalReport] = {}
    if ablation:
        abl_agents = ([policy] if policy else []) + ["attention-topk"]
        abl_names = (["ppo"] if policy else []) + ["attention-topk"]
        abl_budgets = list(ablation_budgets) if ablation_budgets else list(budgets)
        subset = ablation_slides if ablation_slides is not None else max_slides
        for rule, env_id in ABLATION_ENVS.items():
            if env_id == "WSIZoom-v0" and subset == max_slides:
                kept = [r for r in main.rows if r.agent in abl_names and r.budget in abl_budgets]
                ablations[rule] = EvalReport(main.dataset, split, env_id, kept, main.slides, list(seeds))
                continue
            ablations[rule] = evaluate(
                abl_agents,
                env_id=env_id,
                dataset=dataset,
                split=split,
                budgets=abl_budgets,
                seeds=seeds,
                env_kwargs=env_kwargs,
                max_slides=subset,
                names=abl_names,
                progress=progress,
                backend=backend,
            )
    return ProtocolResult(_write(main, ablations, out, readme), main, ablations)


def _write(
    main: EvalReport, ablations: dict[str, EvalReport], out: str | Path, readme: str | Path | None
) -> str:
    """Write ``results.md`` and ``results.json`` (and the README section); return the Markdown."""
    name = main.dataset
    parts = [
        f"**{name}** ({main.caption()} Produced by `wsigym evaluate --all`; not typed by hand.)",
        "",
        main.to_markdown(),
    ]
    if ablations:
        parts += [
            "",
            "State-update ablation (the policy is the one trained with the TSU; "
            f"attention-top-k needs no training; {_slides_caption(ablations)}):",
            "",
            _ablation_table(ablations),
        ]
    parts += [
        "",
        "For context only, **a different dataset** (real CAMELYON16, SASHA's published numbers, "
        "not produced here):",
        "",
        published_table(),
    ]
    text = "\n".join(parts) + "\n"
    out = Path(out)
    atomic_write_text(out / "results.md", text)
    payload = {
        "main": _report_dict(main),
        "ablation": {rule: _report_dict(r) for rule, r in ablations.items()},
    }
    atomic_write_json(out / "results.json", payload)
    if readme is not None:
        replace_section(readme, name, text)
    return text


def _slides_caption(ablations: dict[str, EvalReport]) -> str:
    counts = sorted({r.slides for r in ablations.values()})
    return f"{'/'.join(str(c) for c in counts)} slides of the split"


def _report_dict(report: EvalReport) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(report)
