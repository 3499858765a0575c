"""wsigym.io: atomic writes (mode, no temp left on error), the one NaN policy of JSON files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from wsigym.evaluate import EvalReport, EvalRow
from wsigym.io import (
    atomic_folder,
    atomic_write,
    atomic_write_bytes,
    atomic_write_files,
    atomic_write_json,
    atomic_write_text,
    dumps_json,
    new_file_mode,
    temp_name,
    temp_writer_pid,
)


def test_new_file_gets_the_open_mode_and_a_replaced_file_keeps_its_own(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "one\r\n")
    assert path.read_bytes() == b"one\r\n"  # newlines as given
    assert path.stat().st_mode & 0o777 == new_file_mode() != 0o600
    os.chmod(path, 0o600)
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_an_error_while_writing_leaves_the_old_file_and_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_several_files_are_all_written_or_none(tmp_path):
    old = atomic_write_text(tmp_path / "a.bin", "old")
    with pytest.raises(TypeError):
        atomic_write_files({old: b"new", tmp_path / "b.bin": "not bytes"})  # type: ignore[dict-item]
    assert old.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    atomic_write_files({old: b"new", tmp_path / "d" / "b.bin": b"b"})
    assert old.read_bytes() == b"new" and (tmp_path / "d" / "b.bin").read_bytes() == b"b"
    assert (tmp_path / "d" / "b.bin").stat().st_mode & 0o777 == new_file_mode()


def test_json_is_strict_with_null_for_non_finite_numbers(tmp_path):
    obj = {"nan": math.nan, "inf": -math.inf, 3: np.float32(0.5), "arr": np.arange(2), "t": (1, Path("x"))}
    text = dumps_json(obj, sort_keys=True)
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"3": 0.5, "arr": [0, 1], "inf": None, "nan": None, "t": [1, "x"]}
    with pytest.raises(TypeError):
        dumps_json({"x": object()})
    path = atomic_write_json(tmp_path / "x.json", {"a": math.nan})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {"a": None}


def test_an_evaluation_report_round_trips_nan_metrics(tmp_path):
    row = EvalRow("a", 0.1, {"auc": math.nan, "accuracy": 0.5}, {"auc": math.nan, "accuracy": 0.0})
    row.per_seed = [{"auc": math.nan}]
    report = EvalReport("d", "test", "WSIZoom-v0", [row], slides=2, seeds=[0])
    report.to_json(tmp_path / "r.json")
    again = EvalReport.from_json(tmp_path / "r.json")
    assert math.isnan(again.rows[0].mean["auc"]) and math.isnan(again.rows[0].per_seed[0]["auc"])
    assert again.rows[0].mean["accuracy"] == 0.5 and again.to_markdown() == report.to_markdown()


def test_temp_names_record_the_writer(tmp_path):
    name = temp_name("slide.h5")
    assert temp_writer_pid(tmp_path / name, "slide.h5") == os.getpid()
    assert temp_writer_pid(tmp_path / ".slide.h5.123.tmp", "slide.h5") == 123  # the older form
    assert temp_writer_pid(tmp_path / ".other.h5.123.tmp", "slide.h5") is None
    assert temp_writer_pid(tmp_path / ".slide.h5.abc.tmp", "slide.h5") is None


def test_a_folder_is_published_whole_or_not_at_all(tmp_path):
    target = tmp_path / "cache"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not target.exists()  # nothing visible while it is built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"] and (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError, match="half-way"), atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("two")
        raise RuntimeError("half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # the old folder, no temp left
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_folder(target) as tmp:  # an existing folder is replaced, not merged into
        (tmp / "c.txt").write_text("three")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
