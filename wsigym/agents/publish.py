"""Publish a trained policy folder like a zoo model: a card with the evaluation table, then the Hub.

The folder written by :func:`wsigym.agents.ppo.train_ppo` (``policy.safetensors``, ``policy.json``,
``ppo-<env>.zip``) gets ``README.md`` (rendered from ``hub_cards/ppo.md`` by :func:`zoo.cards.render_card`),
``results.json`` (the :class:`~wsigym.evaluate.EvalReport`, evaluated with action masks) and
``evaluation.md``. When the folder has the SB3-native files of :mod:`wsigym.agents.sb3_export`
(``sb3.json``), the card's ``model-index`` also holds their ``mean_reward`` (as ``"mean +/- std"``,
rl-zoo3's convention) and the card lists the zip, ``config.yml``, ``env_kwargs.yml`` and the replay. Repos are named as rl-zoo3 / huggingface_sb3 do: ``{org}/{algo}-{env_id}``,
e.g. ``wsigym/ppo-WSIZoom-v0``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from wsigym.agents.sb3_export import SB3_SUMMARY, repo_name
from wsigym.evaluate import EvalReport
from wsigym.io import atomic_write_text

RESULTS_NAME = "results.json"
TABLE_NAME = "evaluation.md"


def headline(report: EvalReport, agent: str, budget: float) -> dict[str, float]:
    """The ``agent`` row at ``budget`` as flat card metrics (means)."""
    for row in report.rows:
        if row.agent == agent and abs(row.budget - budget) < 1e-9:
            return {k: v for k, v in row.mean.items() if isinstance(v, float) and math.isfinite(v)}
    raise ValueError(f"the report has no row for agent {agent!r} at budget {budget:.0%}")


def write_card(
    folder: str | Path,
    report: EvalReport,
    *,
    agent: str = "ppo",
    budget: float = 0.2,
    repo_id: str | None = None,
) -> Path:
    """Write ``README.md``, ``results.json`` and ``evaluation.md`` into a policy folder.

    The card's ``model-index`` holds the ``agent`` row at ``budget`` (test split); the whole table
    (every agent and budget, mean ± std over seeds) is in the card body.
    """
    from zoo import cards
    from zoo.pretrained import hub_org

    folder = Path(folder)
    config = json.loads((folder / "policy.json").read_text())
    env_id = config.get("env_id", report.env_id)
    name = repo_name("ppo", env_id)
    metrics = {f"{report.split}": headline(report, agent, budget)}
    sb3 = _sb3_summary(folder)
    if sb3 is not None and report.split in metrics:
        metrics[report.split]["mean_reward"] = sb3["mean_reward"]
        metrics[report.split]["std_reward"] = sb3["std_reward"]
    table = report.to_markdown()
    ppo = config.get("ppo", {})
    env_kwargs = ppo.get("env_kwargs", {})
    training = {
        "dataset": report.dataset,
        "reward": env_kwargs.get("reward", "ce"),
        "training budget": env_kwargs.get("budget", "env default"),
        **{
            key: ppo.get(key)
            for key in (
                "total_timesteps",
                "n_envs",
                "n_steps",
                "batch_size",
                "n_epochs",
                "learning_rate",
                "gamma",
                "gae_lambda",
                "vf_coef",
                "max_grad_norm",
                "hidden",
                "standardise",
                "warm_start",
                "seed",
            )
        },
    }
    text = cards.render_card(
        "ppo",
        model_name=name,
        load_id=repo_id or name,
        metrics=metrics,
        dataset_name=report.dataset,
        training=training,
        train_command=None,
        env_id=env_id,
        algo="MaskablePPO",
        evaluation_table=table,
        evaluation_caption=report.caption(),
        headline_budget=f"{budget:.0%}",
        sb3=sb3,
        hub_repo=repo_id or f"{hub_org()}/{name}",
    )
    atomic_write_text(folder / TABLE_NAME, report.caption() + "\n\n" + table + "\n")
    report.to_json(folder / RESULTS_NAME)
    atomic_write_text(folder / "README.md", text)
    return folder / "README.md"


def _sb3_summary(folder: Path) -> dict[str, Any] | None:
    """``sb3.json`` of :func:`wsigym.agents.sb3_export.export_sb3`, or None when absent."""
    path = folder / SB3_SUMMARY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        float(data["mean_reward"]), float(data["std_reward"]), str(data["zip"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: not an sb3 summary ({type(e).__name__}: {e}); rerun wsigym sb3-export"
        ) from None
    return data


def publish(folder: str | Path, repo_id: str, report: EvalReport | None = None, **card: Any) -> str:
    """Write the card (when ``report`` is given) and push the folder with :func:`zoo.hub.push_folder`.

    Returns the commit sha.

    Raises:
        ValueError: the folder has no card and no report was given.
    """
    from zoo import hub

    folder = Path(folder)
    if report is not None:
        write_card(folder, report, repo_id=repo_id, **card)
    if not (folder / "README.md").is_file():
        raise ValueError(f"{folder}: no README.md card; evaluate the policy first (wsigym evaluate --card)")
    return hub.push_folder(folder, repo_id, commit_message=f"Upload {repo_id.split('/')[-1]}")
