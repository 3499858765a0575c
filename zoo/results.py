"""Markdown results tables built from the ``metrics.json`` of trained model folders (never typed by hand).

Each folder is one run written by :func:`zoo.train.train_and_save`; the table has one row per folder
with its test metrics: accuracy, AUC, binary F1 (two classes only), macro-F1, ECE, plus parameters,
forward FLOPs per slide and inference slides/s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    if not path.is_file():
        raise DataError(str(path), "no metrics.json (train the model with zoo.train.train_and_save)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"not valid JSON: {e}") from None
    if not isinstance(record, dict) or not isinstance(record.get("test"), dict):
        raise DataError(str(path), "expected an object with a 'test' metrics object")
    return record


def results_table(model_dirs: Sequence[str | Path]) -> str:
    """One Markdown table row per run folder, in the order given (see the module docstring)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "|".join(["---:"] * (len(COLUMNS) - 2)) + "|"]
    for directory in model_dirs:
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
