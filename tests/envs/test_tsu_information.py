"""The state-update calibration (wsigym.calibration): exact to the environment's rules, and the CLI."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import wsigym.envs  # noqa: F401
from wsigym.calibration import tsu_information as ti
from wsigym.calibration.tables import format_agreement, format_report
from wsigym.cli import main
from wsigym.envs.slide_source import budget_steps
from wsigym.envs.state_update import UPDATE_RULES


@pytest.fixture()
def calibrated(tiny_dataset, models):
    hafed, tsu = models
    env = gym.make("WSIZoom-v0", dataset=tiny_dataset, split="train", hafed=hafed, tsu=tsu, progress=False)
    yield ti.from_env(env)
    env.close()


def test_final_states_equal_stepping_every_rule(calibrated) -> None:
    """The global shortcut (one application at the last zoom) and the TSU/no-update stepping give the
    state the environment's rules give when applied zoom after zoom."""
    source, _, update = calibrated
    rows = source.rows(0)
    z, v = source.z[rows].float(), source.v[rows].float()
    orders = torch.stack([torch.randperm(len(z), generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    steps = [3, 7]
    for rule in ("tsu", "global", "none"):
        got = ti._final_states(z, v, orders, steps, rule, update)
        st = ti.fresh_state(z, 2)
        for t in range(max(steps)):
            a = orders[:, t]
            UPDATE_RULES[rule](
                st, a, torch.ones(2, dtype=torch.bool), v[a], update.tsu, update.tau, update.absolute_cosine
            )
            if t + 1 in steps:
                torch.testing.assert_close(
                    got[t + 1], ti.stacked_states(st), msg=f"{rule} after {t + 1} zooms"
                )
        assert not torch.equal(got[7], z.expand(2, -1, -1))


def test_agreement_and_table_on_known_kinds(calibrated) -> None:
    source, hafed, update = calibrated
    agreement = ti.update_agreement(source, update, anchors_per_kind=4, progress=False)
    assert agreement["slides"] > 0 and agreement["anchors"]["tumour"] > 0
    assert agreement["anchors"]["mimic"] == 0  # this dataset records no mimic tissue
    for kind in ("other", "tumour"):
        assert 0.0 <= agreement["same_kind_rate"][kind] <= 1.0
        assert agreement["error"][kind]["rows"] > 0
    assert np.isnan(agreement["same_kind_rate"]["mimic"])
    as_saved = json.loads(json.dumps(agreement).replace("NaN", "null"))  # wsigym.io writes NaN as null
    assert "nan" in format_agreement(as_saved)
    table = ti.fixed_agent_table(source, hafed, update, budgets=(0.1, 0.5), seeds=(0, 1), progress=False)
    assert len(table) == 3 * 3 * 2
    by = {(r["agent"], r["rule"], r["budget"]): r for r in table}
    assert by[("oracle", "tsu", 0.5)]["seeds"] == 1 and by[("oracle", "tsu", 0.5)]["std"]["auc"] == 0.0
    assert by[("random", "none", 0.1)]["seeds"] == 2
    # the positives split: the oracle's first zoom is a tumour patch on every positive slide
    assert by[("oracle", "none", 0.1)]["positives"]["hit_rate"] == 1.0
    assert np.isnan(by[("oracle", "none", 0.1)]["positives"]["p_miss"])
    positives = [i for i in range(len(source.slide_ids)) if int(source.labels[i]) == 1]
    reached = []
    for seed in (0, 1):
        for i in positives:
            order = ti.zoom_orders(source, i, hafed, [seed])[("random", seed)]
            zoomed = order[: budget_steps(source.n_list[i], 0.1)]
            reached.append(
                bool((np.nan_to_num(source.tumour[source.rows(i)].numpy(), nan=0.0)[zoomed] > 0).any())
            )
    assert by[("random", "tsu", 0.1)]["positives"]["hit_rate"] == pytest.approx(np.mean(reached))
    refs = ti.reference_metrics(source, hafed)
    assert set(refs) == {"no-zoom", "full"}


def test_cli_state_update_part(tmp_path, capsys) -> None:
    """``wsigym synth calibrate`` on synth-c16-tiny with the environment's default models."""
    out = tmp_path / "cal.json"
    args = [
        "synth",
        "calibrate",
        "--tiny",
        "--quiet",
        "--cache-dir",
        str(tmp_path / "tiny"),
        "--part",
        "state-update",
    ]
    assert main([*args, "--budgets", "0.2", "--seeds", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dataset"] == "synth-c16-tiny" and "models" not in report
    su = report["state_update"]
    assert su["slides"] == 12 and su["agreement"]["anchors"]["tumour"] > 0
    views = {
        "epochs": 3,
        "zoom_fraction": 0.2,
        "oracle_zoom_tumour_hit": 0.5,
    }  # a part measured by another run
    report.update(views, models={"kept": {"test": {"accuracy": 1.0, "auc": 1.0}}})
    out.write_text(json.dumps(report))
    assert main([*args, "--budgets", "0.2", "--seeds", "1", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["models"] == report["models"] and again["state_update"]["fixed_agents"] != su["fixed_agents"]
    text = capsys.readouterr().out
    assert "same kind" in text and "attention-topk" in text and format_report(again) in text
