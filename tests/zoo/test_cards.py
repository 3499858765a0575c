"""Model cards: every family template renders valid Hub metadata holding exactly the measured metrics."""

from __future__ import annotations

import numpy as np
import pytest
from huggingface_hub import ModelCard

from zoo import cards
from zoo.registry import list_architectures

METRICS = {
    "accuracy": 0.90625,
    "auc": 0.9453125,
    "f1": 0.8888888888888888,
    "f1_macro": 0.9019607843137255,
    "ece": 0.07421875,
    "nll": 0.3125,
    "slides_per_s": 812.5,
}
RECONSTRUCTED = ("semamil", "wisefuse", "lrmil", "asmil", "hafed", "tsu")


def _render(family: str, metrics=METRICS, **kw) -> str:
    return cards.render_card(
        family,
        model_name=f"{family}-camelyon16",
        load_id=f"lab/{family}-camelyon16",
        config={"architecture": family, "in_dim": 384, "num_classes": 2, "lr_hint": 4.14e-4},
        num_parameters=123_456,
        metrics=metrics,
        dataset_name="camelyon16",
        training={"fold": 0, "seed": 3, "epochs_run": 50, "recipe": {"lr": 1e-4, "optimizer": "adamw"}},
        **kw,
    )


def test_one_template_per_family():
    assert set(cards.template_families()) == {*list_architectures(), "ppo"}


@pytest.mark.parametrize("family", list_architectures())
def test_family_card_metadata_and_values(family):
    text = _render(family, train_command="zoo train x && zoo push y lab/x")
    meta = cards.card_metadata(text)
    assert meta["library_name"] == "wsigym-zoo"
    assert meta["license"] == "apache-2.0"
    assert {"pathology", "multiple-instance-learning", "whole-slide-image", family} <= set(meta["tags"])
    assert len(meta["tags"]) == len(set(meta["tags"]))
    assert "datasets" not in meta  # CAMELYON16 is not a Hub dataset id
    assert "pipeline_tag" not in meta  # feature bags: none of the Hub's tasks
    assert cards.validate_hub_metadata(text, kind="mil") == meta
    headline = {k: v for k, v in METRICS.items() if k != "slides_per_s"}
    assert cards.card_metrics(text) == headline  # exact values, parsed back from YAML
    # huggingface_hub's own parser reads the same numbers
    results = ModelCard(text).data.eval_results
    assert sorted(r.metric_value for r in results) == sorted(headline.values())
    assert {r.dataset_type for r in results} == {"camelyon16"} and {r.dataset_split for r in results} == {
        "test"
    }
    assert "| Accuracy | 0.9062 |" in text and "| slides_per_s | 812.5000 |" in text
    assert 'zoo.load("lab/' + family + '-camelyon16")' in text
    assert "| `lr_hint` | 0.000414 |" in text and "| lr | 0.0001 |" in text
    assert "zoo train x && zoo push y lab/x" in text
    assert ("## Reconstruction" in text) == (family in RECONSTRUCTED or family == "transmil")
    assert "{{" not in text and "{%" not in text


def test_not_evaluated_card_has_no_numbers():
    text = _render("abmil", metrics=None)
    assert "Not evaluated" in text
    assert "model-index" not in cards.card_metadata(text)
    assert cards.card_metrics(text) == {}


def test_nan_metric_is_shown_but_not_indexed_and_numpy_accepted():
    metrics = {"accuracy": np.float64(0.5), "auc": float("nan"), "f1": np.float32(0.25)}
    text = _render("acmil", metrics=metrics)
    assert cards.card_metrics(text) == {"accuracy": 0.5, "f1": 0.25}
    assert "| AUC (ROC; one-vs-rest macro for >2 classes) | n/a |" in text
    assert type(cards.card_metrics(text)["accuracy"]) is float


def test_split_metrics_take_test_for_the_index():
    metrics = {"val": {"accuracy": 1.0, "auc": 1.0}, "test": {"accuracy": 0.75, "auc": 0.5}}
    text = _render("abmil", metrics=metrics)
    assert cards.card_metrics(text) == {"accuracy": 0.75, "auc": 0.5}
    assert "| Metric | val | test |" in text and "| Accuracy | 1.0000 | 0.7500 |" in text


def test_check_card_catches_mismatch_and_bad_yaml():
    text = _render("abmil", metrics={"accuracy": 0.75})
    assert cards.check_card(text, {"accuracy": 0.75})["library_name"] == "wsigym-zoo"
    with pytest.raises(cards.CardError, match="does not match"):
        cards.check_card(text, {"accuracy": 0.7500001})
    with pytest.raises(cards.CardError, match="not valid YAML"):
        cards.check_card("---\ntags: [a\n---\n")
    with pytest.raises(cards.CardError, match="no YAML front matter"):
        cards.check_card("# title only\n")
    with pytest.raises(cards.CardError, match="no card template"):
        cards.render_card("resnet", model_name="x", load_id="x")


def test_ppo_card_follows_sb3_conventions():
    text = cards.render_card(
        "ppo",
        model_name="ppo-WSIZoom-v0",
        load_id="lab/ppo-WSIZoom-v0",
        metrics={"mean_reward": 0.8125, "std_reward": 0.125, "accuracy": 0.875},
        dataset_name="synth-c16",
        env_id="WSIZoom-v0",
        algo="MaskablePPO",
        n_eval_episodes=16,
        is_deterministic=True,
    )
    meta = cards.card_metadata(text)
    assert meta["library_name"] == "stable-baselines3"
    assert {"WSIZoom-v0", "reinforcement-learning", "stable-baselines3"} <= set(meta["tags"])
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"mean_reward": "0.81 +/- 0.12", "accuracy": 0.875}
    assert "trusted" in text and "16 episodes" in text
    parsed = {r.metric_type: r.metric_value for r in ModelCard(text).data.eval_results}
    assert parsed == {"mean_reward": "0.81 +/- 0.12", "accuracy": 0.875}


@pytest.mark.parametrize(
    "change, match",
    [
        (("license: apache-2.0", 'license: apache-2.0\ndatasets: ["synth-c16"]'), "not Hub dataset ids"),
        (("license: apache-2.0", "license: apache-2.0\npipeline_tag: image-classification"), "pipeline_tag"),
        (("model-index:", "model-index: 3\nbroken:"), "model-index|cannot parse"),
        (("library_name: wsigym-zoo\n", ""), "library_name"),
    ],
)
def test_hub_metadata_rules_refuse(change, match):
    text = _render("abmil").replace(*change, 1)
    with pytest.raises(cards.CardError, match=match):
        cards.validate_hub_metadata(text, kind="mil")


def test_shipped_cards_follow_the_hub_rules_and_push_targets():
    import json
    from pathlib import Path

    import zoo

    root = Path(zoo.__file__).parent / "assets" / "weights"
    folders = [f for f in sorted(root.iterdir()) if (f / "README.md").is_file()]
    assert len(folders) >= 10
    for folder in folders:
        text = (folder / "README.md").read_text()
        kind = "agent" if (folder / "policy.json").is_file() else "mil"
        cards.validate_hub_metadata(text, kind=kind)
        for line in text.splitlines():
            if "zoo push " in line:
                target = line.split("zoo push ")[1].split()[1]
                assert target == f"wsigym/{folder.name}", (folder.name, line)
        if kind == "mil":
            inputs = json.loads((folder / "card.json").read_text())
            cards.check_card(text, inputs["metrics"])
