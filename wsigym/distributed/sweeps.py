"""Training sweeps: every point of a grid (seeds x recipes x update rules, seeds x families) is one normal
training run in its own folder, run one after another here or as Ray Tune trials.

A *trial function* ``trial(point) -> metrics`` trains one run for ``point`` (a dict such as
``{"seed": 1, "recipe": "sasha", "update": "tsu"}``) into ``out/<trial_name(point)>`` -- the same run folder,
TensorBoard logs included, as the single-run command writes -- and returns its final metrics (plain
JSON numbers). :func:`run_sweep` runs it for every point of the grid:

- ``backend="local"``: one trial after another in this process (no Ray needed);
- ``backend="ray"``: one Ray Tune trial per point (``tune.grid_search`` over each axis), as many at a time
  as the cluster has room for (``resources`` per trial); Tune's own records go to ``out/tune``, and its
  dashboard / TensorBoard integration see each trial's reported metrics.

Either way ``out/sweep.json`` lists every point with its run folder and metrics, in grid order.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wsigym.distributed.cluster import check_backend, connect
from wsigym.io import atomic_write_json

SWEEP_RECORD = "sweep.json"


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid``'s axes, in order (the last axis varies fastest).

    Raises:
        ValueError: an axis with no value.
    """
    for axis, values in grid.items():
        if len(values) == 0:
            raise ValueError(f"sweep axis {axis!r} has no value")
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def trial_name(point: Mapping[str, Any]) -> str:
    """Folder name of a point: its values joined by ``-`` (``seed`` written ``seed<N>``), e.g. ``sasha-tsu-seed1``."""
    parts = [f"seed{v}" if k == "seed" else str(v) for k, v in point.items() if v is not None]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts)) or "run"


def run_sweep(
    trial: Callable[[dict[str, Any]], dict[str, float]],
    grid: Mapping[str, Sequence[Any]],
    out: str | Path,
    *,
    backend: str = "local",
    name: str = "sweep",
    resources: Mapping[str, float] | None = None,
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Run ``trial`` for every point of ``grid`` (module docstring) and write ``out/sweep.json``.

    Args:
        trial: ``trial(point) -> metrics``; it writes its run into ``out / trial_name(point)``.
        resources: Ray resources of one trial (default ``{"cpu": 1}``; add ``"gpu": 1`` for CUDA runs).
        address: the cluster (:func:`wsigym.distributed.cluster.connect`).

    Returns:
        ``[{"point", "run", "metrics"}, ...]`` in grid order (``run`` relative to ``out``).
    """
    check_backend(backend)
    out = Path(out).resolve()  # Tune runs trials in folders of its own: paths must not be relative
    points = grid_points(grid)
    if backend == "local":
        metrics = [trial(point) for point in points]
    else:
        metrics = _tune(trial, grid, points, out, name, dict(resources or {"cpu": 1}), address)
    record = [{"point": point, "run": trial_name(point), "metrics": m} for point, m in zip(points, metrics)]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SWEEP_RECORD, {"name": name, "backend": backend, "trials": record})
    return record


def _tune(
    trial: Callable[[dict[str, Any]], dict[str, float]],
    grid: Mapping[str, Sequence[Any]],
    points: list[dict[str, Any]],
    out: Path,
    name: str,
    resources: dict[str, float],
    address: str | None,
) -> list[dict[str, float]]:
    import os

    connect(address)
    from ray import tune

    cwd = os.getcwd()

    def trainable(config: dict[str, Any]) -> None:
        if os.path.isdir(cwd):  # Tune starts a trial in a folder of its own; relative paths are the user's
            os.chdir(cwd)
        tune.report(dict(trial(dict(config))))

    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={axis: tune.grid_search(list(values)) for axis, values in grid.items()},
        run_config=tune.RunConfig(name=name, storage_path=str(out / "tune"), verbose=0),
    )
    results = tuner.fit()
    by_point: dict[str, dict[str, float]] = {}
    for result in results:
        if result.error is not None:
            raise RuntimeError(
                f"sweep trial {trial_name(result.config)} failed: {result.error}"
            ) from result.error
        point = {axis: result.config[axis] for axis in grid}
        by_point[json.dumps(point, sort_keys=True)] = {
            k: v for k, v in (result.metrics or {}).items() if k in _metric_keys(result.metrics)
        }
    return [by_point[json.dumps(p, sort_keys=True)] for p in points]


def _metric_keys(metrics: Mapping[str, Any] | None) -> list[str]:
    """The trial's own metrics among what Tune reports (Tune adds bookkeeping keys)."""
    tune_keys = {
        "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
        "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    }  # fmt: skip
    return [k for k in (metrics or {}) if k not in tune_keys and isinstance(metrics[k], int | float)]
