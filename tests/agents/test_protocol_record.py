"""The protocol record: protocol.json rows (mean ± std over training seeds) and the README table from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsigym.agents.protocol_record import (
    PUBLISHED_C16,
    FullHafed,
    TrainedRun,
    build_protocol,
    load_runs,
    protocol_markdown,
    runs_from_report,
    write_protocol,
)
from wsigym.cli import main
from wsigym.errors import DataError
from wsigym.evaluate import evaluate


def _first_legal(obs, info):
    return int(np.flatnonzero(obs["action_mask"])[0])


def _last_legal(obs, info):
    return int(np.flatnonzero(obs["action_mask"])[-1])


def test_writer_on_a_tiny_evaluation(env_kwargs, tmp_path):
    """Two "training seeds" (two deterministic agents standing for two trained policies) evaluated on the
    tiny split; the record's mean/std are those of the two evaluations, and the README section is
    regenerated from the record."""
    kw = {k: v for k, v in env_kwargs.items() if k != "dataset"}
    runs, full = [], []
    for seed, agent in enumerate([_first_legal, _last_legal]):
        report = evaluate(
            [agent, "random", "full-hafed"],
            dataset=env_kwargs["dataset"],
            split="train",
            budgets=(0.2,),
            seeds=(0, 1),
            env_kwargs=kw,
            names=["ppo", "random", "full-hafed"],
            progress=False,
        )
        r, f = runs_from_report(
            report, recipe="sasha", reward="ce", update="tsu", train_seed=seed, compute="2 episodes",
            include_baselines=seed == 0,
        )  # fmt: skip
        runs += r
        full += f[:1] if seed == 0 else []
        if seed == 0:
            acc = {row.agent: row for row in report.rows}
    protocol = build_protocol(runs, FullHafed(full, [0]), dataset="tiny", split="train")
    ppo, rnd = protocol["rows"]
    assert (ppo["agent"], ppo["recipe"], ppo["reward"], ppo["update"], ppo["budget"]) == (
        "ppo",
        "sasha",
        "ce",
        "tsu",
        0.2,
    )
    assert ppo["train_seeds"] == [0, 1] and ppo["compute"] == "2 episodes"
    values = [r.metrics["accuracy"] for r in runs if r.agent == "ppo"]
    assert ppo["accuracy"] == {"mean": pytest.approx(np.mean(values)), "std": pytest.approx(np.std(values))}
    assert rnd["recipe"] is None and rnd["train_seeds"] == [0, 1]  # the random agent: episode seeds
    assert rnd["accuracy"]["mean"] == pytest.approx(acc["random"].mean["accuracy"])
    assert protocol["full_hafed"]["accuracy"]["mean"] == pytest.approx(acc["full-hafed"].mean["accuracy"])
    assert all(p["source"] for p in protocol["published"]) and len(protocol["published"]) == len(
        PUBLISHED_C16
    )
    assert sum("unverified" in p["source"] for p in protocol["published"]) == 4  # RLogist x2, random, global

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:tiny -->\nold table\n<!-- /results:tiny -->\nafter\n")
    path = write_protocol(protocol, tmp_path / "results", readme=readme)
    assert path == tmp_path / "results" / "tiny" / "protocol.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(protocol))
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert protocol_markdown(protocol, published=False).strip() in text  # published rows: protocol.md only
    assert "| source |" not in text and "[`protocol.md`](results/tiny/protocol.md)" in text
    assert PUBLISHED_C16[0]["source"] in (path.parent / "protocol.md").read_text()
    assert f"{ppo['accuracy']['mean']:.3f} ± {ppo['accuracy']['std']:.3f}" in text
    share = ppo["accuracy"]["mean"] / protocol["full_hafed"]["accuracy"]["mean"]
    assert f"{share:.1%}" in text


def test_cli_and_bad_input(tmp_path, capsys):
    runs = [
        {"agent": "ppo", "recipe": "sasha", "reward": "ce", "update": "tsu", "budget": 0.1, "train_seed": s,
         "metrics": {"accuracy": a, "auc": 0.9, "f1": 0.8}}
        for s, a in ((0, 0.8), (1, 0.9))
    ]  # fmt: skip
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    hafed = json.dumps([{"accuracy": 1.0, "auc": 1.0, "f1": 1.0}])
    args = ["protocol", str(tmp_path / "runs.json"), "--dataset", "d", "--full-hafed", hafed]
    assert main([*args, "--results", str(tmp_path / "res")]) == 0
    data = json.loads((tmp_path / "res" / "d" / "protocol.json").read_text())
    assert data["rows"][0]["accuracy"] == {"mean": pytest.approx(0.85), "std": pytest.approx(0.05)}
    assert "85.0%" in (tmp_path / "res" / "d" / "protocol.md").read_text()

    (tmp_path / "bad.json").write_text(json.dumps([{**runs[0], "metrics": {"accuracy": 0.5}}]))
    with pytest.raises(DataError, match=r"bad\.json.*metrics lack \['auc', 'f1'\]"):
        load_runs(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="training seed twice"):
        build_protocol([TrainedRun.from_dict(runs[0])] * 2, FullHafed([{"accuracy": 1.0}]), dataset="d")
    # the same seed at two training scales (a main run and an ablation run) makes two rows, not an error
    scales = [TrainedRun.from_dict({**runs[0], "compute": c}) for c in ("15 passes", "1 pass")]
    rows = build_protocol(scales, FullHafed([{"accuracy": 1.0}]), dataset="d")["rows"]
    assert [(r["compute"], r["train_seeds"]) for r in rows] == [("15 passes", [0]), ("1 pass", [0])]
    assert main(["protocol", str(tmp_path / "bad.json"), "--dataset", "d", "--full-hafed", hafed]) == 2
    assert "bad.json" in capsys.readouterr().err
