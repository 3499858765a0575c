"""The env flags both CLIs share: parsed flags -> ZoomOptions -> flags round-trips."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from wsigym.cli import build_parser
from wsigym.envs.option_flags import FLAGS, add_env_arguments, env_kwargs_from_args, options_from_args
from wsigym.envs.options import OPTION_NAMES, ZoomOptions


def _parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_env_arguments(p, **kwargs)
    return p


def _argv(options: ZoomOptions) -> list[str]:
    """The flags that give ``options`` (fields left at their default are left out)."""
    argv: list[str] = []
    for f in FLAGS:
        value = getattr(options, f.name)
        if value == getattr(ZoomOptions(), f.name):
            continue
        if f.boolean:
            argv.append(f.flag if value else "--no-" + f.flag[2:])
        else:
            argv += [f.flag, str(value)]
    return argv


def test_no_flags_are_the_defaults():
    args = _parser().parse_args([])
    assert env_kwargs_from_args(args) == {} and options_from_args(args) == ZoomOptions()


@pytest.mark.parametrize(
    "options",
    [
        ZoomOptions(budget=0.1, tau=0.9, reward="delta_margin", device="cuda:1", fold=2),
        ZoomOptions(dataset="camelyon16", split="test", mask_updated=True, absolute_cosine=False),
        ZoomOptions(max_patches=512, hafed="h", tsu="t", budget_end="truncate", illegal_action="raise"),
    ],
)
def test_options_round_trip_through_the_flags(options):
    args = _parser().parse_args(_argv(options))
    assert options_from_args(args) == options
    given = env_kwargs_from_args(args)
    assert given == {k: v for k, v in dataclasses.asdict(options).items() if v != getattr(ZoomOptions(), k)}


def test_every_flag_is_an_option_and_bad_values_are_named():
    assert {f.name for f in FLAGS} <= set(OPTION_NAMES)
    assert set(OPTION_NAMES) - {f.name for f in FLAGS} == {"update", "progress"}
    with pytest.raises(ValueError, match="budget must be a fraction"):
        options_from_args(_parser().parse_args(["--budget", "2"]))
    with pytest.raises(ValueError, match=r"skip names \['budgets'\]"):
        _parser(skip=("budgets",))
    assert "--split" not in _parser(skip=("split",)).format_help()


def test_both_clis_take_the_same_env_flags():
    argv = ["--budget-end", "truncate", "--device", "cuda", "--illegal-action", "noop", "--tau", "0.5"]
    env = build_parser().parse_args(["env", "info", *argv])
    train = build_parser().parse_args(["train", "ppo", "--out", "x", *argv])
    evaluate = build_parser().parse_args(["evaluate", "--agent", "random", "--fold", "1", *argv])
    expected = {"budget_end": "truncate", "device": "cuda", "illegal_action": "noop", "tau": 0.5}
    assert env_kwargs_from_args(env) == env_kwargs_from_args(train) == expected
    assert env_kwargs_from_args(evaluate) == {**expected, "fold": 1}


def test_live_slide_flags_build_live_slides():
    from wsigym.agents.cli import _env_kwargs, _evaluate_env
    from wsigym.envs.live_source import LiveSlides

    live = ["--live-slides", "s.svs", "--live-labels", "l.csv", "--live-encoder", "timm:x"]
    live += ["--live-mpp", "0.5", "--live-remember-zooms"]
    args = build_parser().parse_args(["evaluate", "--agent", "random", "--reward", "hit", *live])
    assert _evaluate_env(args) == (
        LiveSlides("s.svs", "l.csv", "timm:x", mpp=0.5, remember_zooms=True),
        0,
        {"reward": "hit"},
    )
    args = build_parser().parse_args(["train", "ppo", "--out", "x", *live])
    assert _env_kwargs(args) == {  # JSON-safe: the run records them
        "fold": 0,
        "slides": "s.svs",
        "labels": "l.csv",
        "encoder": "timm:x",
        "mpp": 0.5,
        "remember_zooms": True,
    }
    with pytest.raises(ValueError, match=r"\['labels'\] describe live slides and need slides="):
        options_from_args(build_parser().parse_args(["env", "info", "--live-labels", "l.csv"]))
    with pytest.raises(ValueError, match="not both"):
        options_from_args(build_parser().parse_args(["env", "info", "--dataset", "d", *live]))
    assert "--live-slides" not in _parser(skip=("dataset",)).format_help()
