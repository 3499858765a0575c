"""Learning curves of a run folder: TensorBoard + validation history into one JSON, and the figure."""

from __future__ import annotations

import json

import pytest

from wsigym.agents.learning_curves import (
    CURVES,
    TRAINING_TAGS,
    draw_curves,
    load_curves,
    read_curves,
    reward_per_step,
    write_curves,
)
from wsigym.cli import main
from wsigym.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _log(run, points, walltime0):
    """One TensorBoard event file under ``run/tb/ppo_1`` with ``{step: (return, length)}``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "tb" / "ppo_1"), filename_suffix=f".{walltime0}")
    for k, (step, (ret, length)) in enumerate(sorted(points.items())):
        writer.add_scalar(TRAINING_TAGS["return"], ret, step, walltime=walltime0 + k)
        writer.add_scalar(TRAINING_TAGS["episode_length"], length, step, walltime=walltime0 + k)
    writer.close()


@pytest.fixture
def resumed_run(tmp_path):
    """A run killed after step 300 and resumed from its checkpoint at step 200: steps 300 logged twice."""
    run = tmp_path / "tsu-20pct-1p-seed0"
    _log(run, {100: (-10.0, 10), 200: (-8.0, 10), 300: (-99.0, 10)}, walltime0=1000)
    _log(run, {300: (-6.0, 12), 400: (-4.0, 8)}, walltime0=2000)
    (run / "eval").mkdir()
    history = [
        {"timesteps": 0, "auc": 0.5, "criterion": 2.0},
        {"timesteps": 400, "auc": 0.75, "criterion": 1.1},
    ]
    (run / "eval" / "evaluations.json").write_text(json.dumps({"history": history}))
    return run


def test_curves_keep_the_later_value_of_a_step_logged_twice(resumed_run):
    curves = read_curves(resumed_run)
    ret = curves["training"]["return"]
    assert ret["timesteps"] == [100, 200, 300, 400]
    assert ret["values"] == [
        -10.0,
        -8.0,
        -6.0,
        -4.0,
    ]  # the resumed process's value at 300, not the killed one's
    assert reward_per_step(curves) == ([100, 200, 300, 400], [-1.0, -0.8, -0.5, -0.5])
    assert [row["auc"] for row in curves["validation"]] == [0.5, 0.75]


def test_curves_round_trip_and_draw(resumed_run, tmp_path):
    path = write_curves(resumed_run)
    assert path == resumed_run / CURVES
    assert load_curves(path) == load_curves(resumed_run)
    figure = draw_curves({"a": load_curves(path), "b": load_curves(resumed_run)}, tmp_path / "fig.png")
    assert figure.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="no runs"):
        draw_curves({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_curves_cli_and_its_errors(resumed_run, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert main(["curves", str(resumed_run), "--out", str(out), "--json"]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE) and (resumed_run / CURVES).is_file()
    with pytest.raises(DataError, match="not a `wsigym train ppo` run folder"):
        read_curves(tmp_path / "empty")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"history": []}))
    with pytest.raises(DataError, match=f"{bad}.*'training' and 'validation'"):
        load_curves(bad)
    assert main(["curves", str(bad), "--out", str(tmp_path / "x.png")]) != 0
    assert "bad.json" in capsys.readouterr().err
