"""User errors of both command-line tools: one line naming the file, key or argument and a non-zero
exit; ``--debug`` shows the traceback. Files that are not UTF-8 name themselves."""

from __future__ import annotations

import json

import pytest
from faultkit import one_line_error, run_console, tiny_encoder

from wsigym.cli import main as wsigym_main
from wsigym.data.labels_csv import read_labels_csv
from wsigym.data.splits import read_clam_splits, read_json_splits
from wsigym.errors import DataError
from wsigym.slides.extract import extract_features
from zoo.cli import main as zoo_main
from zoo.hub import ZooLoadError

LATIN1 = "slide_id,label\ns0,tumeur\ns1,t\u00e9moin\n".encode("latin-1")


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_non_utf8_files_name_themselves(tmp_path):
    (tmp_path / "labels.csv").write_bytes(LATIN1)
    with pytest.raises(DataError, match=r"labels\.csv: a labels CSV must be UTF-8 text; byte 0xe9"):
        read_labels_csv(tmp_path / "labels.csv")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "splits_0.csv").write_bytes(b",train,val,test\n0,s\xe9,,\n")
    with pytest.raises(DataError, match=r"splits_0\.csv: a CLAM splits CSV must be UTF-8"):
        read_clam_splits(tmp_path / "splits", ["s"])
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "split_0.json").write_bytes(b'{"train": ["s\xe9"]}')
    with pytest.raises(DataError, match=r"split_0\.json: a JSON splits file must be UTF-8"):
        read_json_splits(tmp_path / "json", ["s"])
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbfslide_id,label\ns0,a\ns1,b\n")  # a BOM is fine
    assert read_labels_csv(tmp_path / "labels.csv")[1] == ("a", "b")


def test_wsigym_user_errors_are_one_line(small_slides, tmp_path, capsys):
    job = tmp_path / "job"
    extract_features(small_slides / "s0.svs", job, tiny_encoder(), progress=False, lr_mag=5, hr_mag=10)
    (tmp_path / "labels.csv").write_bytes(LATIN1)
    cases = [
        (["data", "describe", str(tmp_path / "missing")], "missing: no such dataset folder"),
        (
            [
                *["data", "convert", str(job), str(tmp_path / "out"), "--format", "trident"],
                *["--labels", str(tmp_path / "labels.csv"), "--encoder", "meancolour", "--hr-mag", "10"],
            ],
            "labels.csv: a labels CSV must be UTF-8 text",
        ),
        (
            ["slides", "extract", str(tmp_path / "none.svs"), "--job-dir", str(job), "--encoder", "x:y"],
            "unknown encoder kind 'x'",
        ),
        (
            ["slides", "info", str(tmp_path / "labels.csv")],
            "labels.csv",
        ),
    ]
    for argv, expected in cases:
        assert wsigym_main(argv) == 2, argv
        line = _err_line(capsys)
        assert line.startswith(f"wsigym {argv[0]} {argv[1]}: error: ") and expected in line, line
    with pytest.raises(DataError, match="no such dataset folder"):
        wsigym_main(["--debug", *cases[0][0]])


def test_console_scripts_one_line_and_debug(tmp_path):
    missing = str(tmp_path / "missing")
    proc = run_console("wsigym", ["data", "describe", missing])
    assert proc.returncode == 2
    assert "no such dataset folder" in one_line_error(proc, "wsigym data describe: error: ")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "abmil", "hidden": -1}))
    proc = run_console("zoo", ["--debug", "info", str(folder)])
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ZooLoadError" in proc.stderr


def test_zoo_errors_are_one_line(tmp_path, capsys):
    assert zoo_main(["info", ""]) == 2
    assert "empty model name" in _err_line(capsys)
    assert zoo_main(["push", str(tmp_path / "nowhere"), "org/x"]) == 2
    assert "nowhere is not a folder" in _err_line(capsys)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_bytes(b"\xff\xfe{")
    assert zoo_main(["info", str(tmp_path / "m")]) == 2
    assert "config.json: not valid JSON" in _err_line(capsys)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architecture": "abmil", "hidden": -1}))
    assert zoo_main(["info", str(tmp_path / "m")]) == 2
    assert "model.safetensors: missing" in _err_line(capsys)
    with pytest.raises(ZooLoadError, match=r"model\.safetensors: missing"):
        zoo_main(["--debug", "info", str(tmp_path / "m")])
