"""Markdown results tables built from the ``metrics.json`` of trained model folders (never typed by hand).

Each folder is one run written by :func:`zoo.train.train_and_save`, or a cross-validation folder
written by :func:`zoo.crossval.cross_validate` (it holds ``cv.json`` and one run folder per fold);
the table has one row per folder with its test metrics: accuracy, AUC, binary F1 (two classes only),
macro-F1, ECE, plus parameters, forward FLOPs per slide and inference slides/s. A cross-validation
row gives ``mean ± std`` over its folds (and repeats): the sample standard deviation (``ddof = 1``)
of the per-fold test metrics, each fold's metric computed on its own test slides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsigym.errors import DataError

COLUMNS = (
    "model",
    "dataset",
    "params",
    "FLOPs/slide",
    "acc",
    "AUC",
    "F1 (binary)",
    "macro-F1",
    "ECE",
    "slides/s",
)


def _human(n: float | None, unit: str = "") -> str:
    if n is None or not math.isfinite(float(n)):
        return "–"
    n = float(n)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}".rstrip()
    return f"{n:.0f}{(' ' + unit) if unit else ''}"


def _metric(test: dict[str, Any], key: str, digits: int = 3) -> str:
    value = test.get(key)
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def read_metrics(model_dir: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` record of one run folder.

    Raises:
        DataError: naming the file when it is missing, not JSON, or has no ``test`` metrics.
    """
    path = Path(model_dir) / "metrics.json"
    record = _read_json(path, "train the model with zoo.train.train_and_save")
    if not isinstance(record, dict) or not isinstance(record.get("test"), dict):
        raise DataError(str(path), "expected an object with a 'test' metrics object")
    return record


def _read_json(path: Path, how: str) -> Any:
    """The JSON content of ``path``; ``DataError`` naming it when missing (``how`` says how to make it)
    or not JSON."""
    if not path.is_file():
        raise DataError(str(path), f"no {path.name} ({how})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"not valid JSON: {e}") from None


def read_cv(cv_dir: str | Path) -> dict[str, Any]:
    """The ``cv.json`` of a cross-validation folder.

    Raises:
        DataError: naming the file when it is missing, not JSON, or lacks ``runs``/``folds``.
    """
    path = Path(cv_dir) / "cv.json"
    record = _read_json(path, "write it with zoo train --cv K")
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list) or not record["runs"]:
        raise DataError(str(path), "expected an object with a non-empty 'runs' list and 'folds'")
    if not isinstance(record.get("folds"), int):
        raise DataError(str(path), "expected an integer 'folds'")
    return record


SUMMARY_METRICS = ("accuracy", "auc", "f1", "f1_macro", "ece", "nll", "slides_per_s")


def cv_summary(cv_dir: str | Path, runs: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Mean, sample std and per-fold values of each test metric over the run folders of a CV folder.

    Args:
        runs: run folder names under ``cv_dir``; None reads them from ``cv_dir/cv.json``.

    Returns:
        ``{metric: {"mean", "std", "n", "values"}}`` for every metric that all runs report (``std`` is
        None for a single run).

    Raises:
        DataError: naming ``cv.json`` or a run's ``metrics.json`` when missing or malformed.
    """
    cv_dir = Path(cv_dir)
    if runs is None:
        runs = read_cv(cv_dir)["runs"]
    tests = [read_metrics(cv_dir / run)["test"] for run in runs]
    out: dict[str, dict[str, Any]] = {}
    for key in SUMMARY_METRICS:
        values = [t.get(key) for t in tests]
        if not values or any(v is None for v in values):
            continue
        arr = np.asarray(values, dtype=np.float64)
        std = float(arr.std(ddof=1)) if len(arr) > 1 else None
        out[key] = {"mean": float(arr.mean()), "std": std, "n": len(arr), "values": arr.tolist()}
    return out


def _cv_row(directory: Path) -> list[str]:
    cv = read_cv(directory)
    summary = cv_summary(directory, cv["runs"])
    first = read_metrics(directory / cv["runs"][0])

    def cell(key: str, digits: int = 3) -> str:
        entry = summary.get(key)
        if entry is None or not math.isfinite(entry["mean"]):
            return "–"
        std = entry["std"]
        return f"{entry['mean']:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")

    folds = f"{cv['folds']}-fold CV" + (f" × {cv['repeats']}" if cv.get("repeats", 1) > 1 else "")
    name = f"{first.get('architecture') or directory.name} ({folds})"
    return [
        name,
        str(first.get("dataset", "–")),
        _human(first.get("params")),
        _human(first.get("flops_per_slide")),
        cell("accuracy"),
        cell("auc"),
        cell("f1"),
        cell("f1_macro"),
        cell("ece"),
        cell("slides_per_s", 1),
    ]


def results_table(model_dirs: Sequence[str | Path]) -> str:
    """One Markdown table row per run or CV folder, in the order given (see the module docstring)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "|".join(["---:"] * (len(COLUMNS) - 2)) + "|"]
    for directory in model_dirs:
        if (Path(directory) / "cv.json").is_file() and not (Path(directory) / "metrics.json").is_file():
            lines.append("| " + " | ".join(_cv_row(Path(directory))) + " |")
            continue
        record = read_metrics(directory)
        test = record["test"]
        name = record.get("architecture") or Path(directory).name
        row = [
            str(name),
            str(record.get("dataset", "–")),
            _human(record.get("params")),
            _human(record.get("flops_per_slide")),
            _metric(test, "accuracy"),
            _metric(test, "auc"),
            _metric(test, "f1"),
            _metric(test, "f1_macro"),
            _metric(test, "ece"),
            _metric(test, "slides_per_s", 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
