"""``calibrate``: the calibration report of a synth-c16 dataset (``wsigym synth calibrate``).

Two parts, each optional, saved together as ``calibration.json`` in the dataset's cache folder:

- ``views`` (:mod:`wsigym.calibration.abmil_views`): ABMIL trained on the high-res children and on the
  low-res patches, and two zoom references with the low-res model;
- ``state_update`` (:mod:`wsigym.calibration.tsu_information`): what the environment's state update
  tells HAFED: the same-kind rate of TSU-updated rows, ``f_S`` vs copy errors, and the fixed-agent
  table under the TSU, global and no-update rules, with the no-zoom and full-resolution references.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

import wsigym.envs  # noqa: F401  (registers the environments)
from wsigym.calibration.abmil_views import train_views
from wsigym.calibration.tsu_information import (
    fixed_agent_table,
    from_env,
    reference_metrics,
    update_agreement,
)
from wsigym.data.synth.dataset import SynthC16
from wsigym.io import atomic_write_json


def state_update_report(
    dataset: SynthC16,
    hafed: Any = None,
    tsu: Any = None,
    budgets: Sequence[float] = (0.1, 0.2),
    seeds: Sequence[int] = (0, 1, 2),
    split: str = "test",
    progress: bool = True,
) -> dict[str, Any]:
    """The ``state_update`` part: measured with the environment ``WSIZoom-v0`` builds on ``dataset``.

    ``hafed`` / ``tsu``: zoo names, Hub repos, folders or models (default: the environment's defaults).
    """
    kwargs = {k: v for k, v in (("hafed", hafed), ("tsu", tsu)) if v is not None}
    env = gym.make("WSIZoom-v0", dataset=dataset, split=split, progress=progress, **kwargs)
    try:
        source, hafed_model, update = from_env(env)
        start = time.perf_counter()
        agreement = update_agreement(source, update, progress=progress)
        table = fixed_agent_table(source, hafed_model, update, budgets, seeds, progress=progress)
        references = reference_metrics(source, hafed_model)
    finally:
        env.close()
    return {
        "hafed": str(hafed) if hafed is not None and not hasattr(hafed, "state_dict") else "env default",
        "tsu": str(tsu) if tsu is not None and not hasattr(tsu, "state_dict") else "env default",
        "split": split,
        "slides": len(source.slide_ids),
        "tau": update.tau,
        "absolute_cosine": update.absolute_cosine,
        "agreement": agreement,
        "fixed_agents": table,
        "references": references,
        "seconds": round(time.perf_counter() - start, 1),
    }


def calibrate(
    dataset: SynthC16,
    *,
    views: bool = True,
    state_update: bool = True,
    epochs: int = 3,
    seed: int = 0,
    fold: int = 0,
    zoom_fraction: float = 0.2,
    lr: float = 1e-3,
    hafed: Any = None,
    tsu: Any = None,
    budgets: Sequence[float] = (0.1, 0.2),
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool = True,
    save: bool = True,
    path: str | Path | None = None,
) -> dict[str, Any]:
    """Run the parts asked for (module docstring) and return the report.

    With ``save`` it is written atomically to ``path`` (default ``dataset.calibration_path``). A report
    already there for the same dataset config and seed keeps the parts not run now, so the parts can
    be measured by separate runs.
    """
    target = Path(path) if path is not None else dataset.calibration_path
    header: dict[str, Any] = {
        "dataset": dataset.name,
        "seed": dataset.seed,
        "config_digest": dataset.config.digest(),
        "coherence": dataset.config.coherence,
        "fold": fold,
    }
    report = _previous(target, header) if save else {}
    report.update(header)
    if views:
        report.update(epochs=epochs, train_seed=seed, zoom_fraction=zoom_fraction, lr=lr)
        report.update(train_views(dataset, epochs, seed, fold, zoom_fraction, progress, lr))
    if state_update:
        report["state_update"] = state_update_report(dataset, hafed, tsu, budgets, seeds, progress=progress)
    if save:
        atomic_write_json(target, report)
    return report


def _previous(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The report at ``path`` when it was measured on the same dataset config and seed, else ``{}``."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = all(old.get(k) == header[k] for k in ("dataset", "seed", "config_digest", "fold"))
    return old if isinstance(old, dict) and same else {}
