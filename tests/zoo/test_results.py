from __future__ import annotations

import json

import pytest

from wsigym.errors import DataError
from zoo.results import results_table


def _write(path, **record):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(record))
    return path


def test_results_table_rows_from_metrics_json(tmp_path):
    a = _write(
        tmp_path / "a",
        architecture="abmil",
        dataset="tiny-2c",
        params=66_050,
        flops_per_slide=3.2e6,
        test={
            "accuracy": 0.8333,
            "auc": 1.0,
            "f1": 0.857,
            "f1_macro": 0.83,
            "ece": 0.3,
            "slides_per_s": 412.3,
        },
    )
    b = _write(
        tmp_path / "b",
        architecture="acmil",
        dataset="tiny-3c",
        params=1_234_567,
        flops_per_slide=None,
        test={"accuracy": 0.5, "auc": None, "f1_macro": 0.4, "ece": 0.1, "slides_per_s": 10.0},
    )
    table = results_table([a, b])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| model | dataset | params")
    assert (
        lines[2] == "| abmil | tiny-2c | 66.05 k | 3.20 M | 0.833 | 1.000 | 0.857 | 0.830 | 0.300 | 412.3 |"
    )
    assert lines[3] == "| acmil | tiny-3c | 1.23 M | – | 0.500 | – | – | 0.400 | 0.100 | 10.0 |"


def test_results_table_bad_folder(tmp_path):
    with pytest.raises(DataError, match=r"metrics\.json"):
        results_table([tmp_path])
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="JSON"):
        results_table([tmp_path])
