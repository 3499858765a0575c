"""SASHA's experiment driver: the plan, resumable runs under per-run locks, the protocol record."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3.common.callbacks import BaseCallback

from wsigym.agents.learning_curves import CURVES
from wsigym.agents.reproduction import (
    CURVES_FIGURE,
    EVALUATION,
    RUN_RECORD,
    UNFINISHED,
    PlannedRun,
    carry_unfinished,
    collect_protocol,
    draw_plan_curves,
    plan_curves,
    plan_status,
    record_dir,
    run_plan,
    sasha_plan,
    sasha_timesteps,
    train_and_evaluate,
)
from wsigym.agents.saved_policy import POLICY_CONFIG, POLICY_WEIGHTS, load_policy
from wsigym.cachedir import lock_path


def test_plan_is_seed_major_main_rows_first_and_shares_the_tsu_run_at_equal_scale():
    plan = sasha_plan((0, 1))
    names = [r.name for r in plan]
    assert names[:4] == [
        "tsu-20pct-15p-seed0",
        "tsu-10pct-15p-seed0",
        "global-20pct-15p-seed0",
        "none-20pct-15p-seed0",
    ]
    assert len(names) == len(set(names)) == 8
    short = sasha_plan((0,), ablation_passes=2)
    assert [r.name for r in short] == [
        "tsu-20pct-15p-seed0", "tsu-10pct-15p-seed0", "tsu-20pct-2p-seed0", "global-20pct-2p-seed0",
        "none-20pct-2p-seed0",
    ]  # fmt: skip
    assert [r.name for r in sasha_plan((0,), rows=("ablation",), ablation_passes=2)] == [
        r.name for r in short[2:]
    ]


def test_the_global_row_shows_its_agent_z_as_sashas_ablation_env_does():
    assert PlannedRun("global", 0.2, 0, 1).env_options == {"update": "global", "agent_view": "lowres"}
    assert PlannedRun("tsu", 0.2, 0, 1).env_options == {"update": "tsu"}


def test_bad_plan_arguments_are_one_clear_error():
    with pytest.raises(ValueError, match="ablation_passes must be a positive number"):
        sasha_plan((0,), ablation_passes=0)
    with pytest.raises(ValueError, match="passes must be a positive number"):
        sasha_plan((0,), passes=float("nan"))
    with pytest.raises(ValueError, match="at least one training seed"):
        sasha_plan(())


def test_sasha_timesteps_is_passes_times_two_episodes_per_slide():
    assert sasha_timesteps([3, 5, 7], passes=15) == (15 * 2 * 15, 30)
    assert sasha_timesteps([3, 5, 7], passes=0.5) == (15, 30)


def test_runs_train_evaluate_skip_when_done_and_report(env_kwargs, tmp_path):
    dataset = env_kwargs["dataset"]
    models = {"hafed": env_kwargs["hafed"], "tsu": env_kwargs["tsu"]}
    plan = sasha_plan((0,), passes=1, budgets=(0.2,), updates=("tsu", "none"))
    assert [r.name for r in plan] == ["tsu-20pct-1p-seed0", "none-20pct-1p-seed0"]
    done = run_plan(plan, tmp_path, dataset=dataset, env_kwargs=models, evidence_policy=None, progress=False)
    assert done == [r.name for r in plan]
    assert [state for _, state in plan_status(plan, tmp_path)] == ["done", "done"]

    train_n = [dataset.load(sid, hr=False).n for sid in dataset.splits[0]["train"]]
    expected = 2 * sum(max(1, math.ceil(0.2 * n)) for n in train_n)
    record = json.loads((tmp_path / plan[0].name / RUN_RECORD).read_text())
    assert record["timesteps"] == expected
    assert json.loads((tmp_path / plan[0].name / "train.json").read_text())["timesteps"] >= expected

    stamp = (tmp_path / plan[0].name / EVALUATION).stat().st_mtime_ns
    run_plan(plan, tmp_path, dataset=dataset, env_kwargs=models, evidence_policy=None, progress=False)
    assert (tmp_path / plan[0].name / EVALUATION).stat().st_mtime_ns == stamp  # done runs are not redone

    protocol = collect_protocol(plan, tmp_path, dataset=dataset)
    rows = {(r["agent"], r["update"]): r for r in protocol["rows"]}
    assert {("sasha", "tsu"), ("sasha", "none"), ("random", "tsu"), ("attention-topk", "tsu")} <= set(rows)
    assert rows[("sasha", "tsu")]["train_seeds"] == [0]
    assert rows[("sasha", "tsu")]["compute"] == record["compute"]
    assert rows[("random", "tsu")]["train_seeds"] == [0, 1, 2]  # episode seeds of an untrained agent
    assert "accuracy" in protocol["full_hafed"]


def test_a_run_another_process_holds_is_skipped_and_a_never_checkpointed_run_restarts(env_kwargs, tmp_path):
    dataset = env_kwargs["dataset"]
    models = {"hafed": env_kwargs["hafed"], "tsu": env_kwargs["tsu"]}
    held, free = PlannedRun("tsu", 0.2, 0, 0.5), PlannedRun("none", 0.2, 0, 0.5)
    stale = tmp_path / free.name
    stale.mkdir(parents=True)
    (stale / "leftover.txt").write_text("a run killed before its first checkpoint")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time, filelock
            lock = filelock.FileLock({str(lock_path(tmp_path / held.name))!r}); lock.acquire()
            print("held", flush=True); time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        done = run_plan(
            [held, free], tmp_path, dataset=dataset, env_kwargs=models, evidence_policy=None, progress=False
        )
    finally:
        holder.kill()
        holder.wait()
    assert done == [free.name]
    assert not (tmp_path / held.name).exists()
    assert not (stale / "leftover.txt").exists() and (stale / EVALUATION).is_file()


def _metrics(evaluation) -> list[dict]:
    """An evaluation's per-seed metrics, without the wall time."""
    rows = json.loads(evaluation.read_text())["rows"]
    return [{k: v for k, v in m.items() if k != "seconds_per_slide"} for row in rows for m in row["per_seed"]]


class KilledAfterTraining(Exception):
    """Stands for the machine going away after training, before the evaluation."""


class KillAtTrainingEnd(BaseCallback):
    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        raise KilledAfterTraining


def test_an_unfinished_run_continues_from_the_record_on_a_new_machine(env_kwargs, tmp_path):
    dataset = env_kwargs["dataset"]
    models = {"hafed": env_kwargs["hafed"], "tsu": env_kwargs["tsu"]}
    (run,) = plan = sasha_plan((0,), passes=0.25, updates=("none",), rows=("ablation",))
    record = record_dir(tmp_path / "results", dataset)
    kw = dict(dataset=dataset, env_kwargs=models, progress=False)
    first = tmp_path / "machine-1"
    with pytest.raises(KilledAfterTraining):
        train_and_evaluate(run, first, record=record, callbacks=[KillAtTrainingEnd()], **kw)
    unfinished = record / run.name / UNFINISHED
    assert (unfinished / RUN_RECORD).is_file() and not (record / run.name / EVALUATION).exists()
    (state,) = [s for _, s in plan_status(plan, tmp_path / "machine-2", record)]
    assert state.startswith("at ") and state.endswith("(in the record)")

    second = tmp_path / "machine-2"  # machine 1 and its runs/ are gone; the record came with the repository
    run_plan(plan, second, evidence_policy=None, record=record, **kw)
    assert (second / run.name / "train.json").is_file() and not unfinished.exists()
    assert [s for _, s in plan_status(plan, second, record)] == ["done"]
    reference = tmp_path / "uninterrupted"
    run_plan(plan, reference, evidence_policy=None, **kw)
    assert _metrics(record / run.name / EVALUATION) == _metrics(reference / run.name / EVALUATION)
    assert carry_unfinished(plan, second, record) == []  # a finished run is not carried


def test_the_committed_record_outlives_the_run_folders(env_kwargs, tmp_path):
    """A new machine has the repository's record but not ``runs/``: finished runs are not trained again."""
    dataset = env_kwargs["dataset"]
    models = {"hafed": env_kwargs["hafed"], "tsu": env_kwargs["tsu"]}
    plan = sasha_plan((0,), passes=0.25, updates=("none",), rows=("ablation",))
    record = record_dir(tmp_path / "results", dataset)
    first = tmp_path / "machine-1"
    run_plan(
        plan, first, dataset=dataset, env_kwargs=models, evidence_policy=None, progress=False, record=record
    )
    name = plan[0].name
    kept = sorted([CURVES, EVALUATION, RUN_RECORD, POLICY_CONFIG, POLICY_WEIGHTS])
    assert sorted(p.name for p in (record / name).iterdir()) == kept
    assert (record / "baselines.json").is_file()
    evaluated = load_file(str(first / name / POLICY_WEIGHTS))  # the record's copy is the evaluated policy
    loaded = load_policy(record / name).policy.state_dict()
    assert evaluated.keys() == loaded.keys() and all(torch.equal(evaluated[k], loaded[k]) for k in evaluated)
    expected = collect_protocol(plan, first, dataset=dataset)
    curves = plan_curves(plan, first)[name]
    assert curves["validation"] and curves["training"]["return"]["timesteps"]  # what the run folder logged

    second = tmp_path / "machine-2"  # the run folders are gone
    assert [state for _, state in plan_status(plan, second)] == ["not started"]
    assert [state for _, state in plan_status(plan, second, record)] == ["done"]
    run_plan(
        plan, second, dataset=dataset, env_kwargs=models, evidence_policy=None, progress=False, record=record
    )
    assert not (second / name).exists() and not (second / "baselines.json").exists()  # nothing redone
    again = collect_protocol(plan, second, dataset=dataset, record=record)
    assert json.dumps(again, sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN-safe equality
    assert plan_curves(plan, second) == {}
    assert json.dumps(plan_curves(plan, second, record)[name]) == json.dumps(curves)  # the figure's data too
    figure = draw_plan_curves(plan, second, record, dataset=dataset)
    assert figure == record / CURVES_FIGURE and figure.read_bytes().startswith(b"\x89PNG")
    assert draw_plan_curves(plan, second, record_dir(tmp_path / "elsewhere", dataset)) is None
