from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zoo.batch import collate
from zoo.models.abmil import ABMIL, ABMILConfig
from zoo.registry import create_model
from zoo.train import RECIPES, SELECTION_RULES, count_flops, evaluate_model, fit, recipe_for, selection_key


def _abmil(seed: int = 0, **cfg) -> ABMIL:
    torch.manual_seed(seed)
    return create_model("abmil", in_dim=32, **cfg)


def test_recipes_cover_families_and_asmil_clips():
    for family in ("abmil", "acmil", "transmil", "asmil", "hafed", "semamil", "lrmil", "wisefuse"):
        r = RECIPES[family]
        assert r["optimizer"] == "adamw" and r["schedule"] == "cosine" and r["warmup"] == 0
        assert r["epochs"] > 0 and r["lr"] > 0
    assert RECIPES["asmil"]["grad_clip"] == 5.0
    assert RECIPES["acmil"]["grad_clip"] is None
    assert recipe_for("unknown-family")["lr"] == 1e-4


def test_fit_learns_the_tiny_task(tiny_dataset):
    result = fit(_abmil(), tiny_dataset, epochs=12, lr=1e-3, progress=False)
    assert result.val_metrics["accuracy"] >= 5 / 6
    assert result.test_metrics["auc"] >= 0.9 and result.test_metrics["accuracy"] >= 5 / 6
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test_probs.shape == (6, 2) and result.test_labels.shape == (6,)
    assert result.params == result.model.num_parameters()
    assert result.flops_per_slide is not None and result.flops_per_slide > 0
    assert not result.model.training


def test_fit_is_deterministic_for_a_seed(tiny_dataset):
    a = fit(_abmil(), tiny_dataset, epochs=3, lr=1e-3, seed=3, progress=False)
    b = fit(_abmil(), tiny_dataset, epochs=3, lr=1e-3, seed=3, progress=False)
    c = fit(_abmil(), tiny_dataset, epochs=3, lr=1e-3, seed=4, progress=False)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # another seed shuffles differently
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_fit_restores_the_best_epoch(tiny_dataset):
    # A high learning rate makes later epochs differ from the best one.
    result = fit(_abmil(), tiny_dataset, epochs=6, lr=3e-3, progress=False)
    best = result.history[result.best_epoch]
    scores = [h["score"] for h in result.history]
    assert best["score"] == max(scores) and scores.index(max(scores)) == result.best_epoch
    again = evaluate_model(result.model, tiny_dataset, "val")
    assert again["nll"] == pytest.approx(best["val_nll"], rel=1e-6)
    if result.best_epoch != len(result.history) - 1:
        assert again["nll"] != pytest.approx(result.history[-1]["val_nll"], rel=1e-6)
    assert result.val_metrics["nll"] == pytest.approx(best["val_nll"], rel=1e-6)


def test_selection_key_ties_go_to_lower_loss_then_later_epoch():
    m = {"auc": 1.0, "f1": 1.0, "nll": 0.30}
    lower_loss = dict(m, nll=0.20)
    for rule in ("auc", "f1+auc"):
        assert selection_key(lower_loss, rule, 2) > selection_key(m, rule, 5)  # same score, lower loss
        assert selection_key(m, rule, 5) > selection_key(m, rule, 2)  # exact tie: the later epoch
        assert selection_key(dict(m, auc=float("nan")), rule, 9) < selection_key(m, rule, 0)  # NaN AUC = 0
    assert selection_key(lower_loss, "loss", 0) > selection_key(m, "loss", 9)
    assert selection_key(m, "loss", 3) > selection_key(m, "loss", 1)
    assert selection_key(lower_loss, "last", 1) < selection_key(m, "last", 2)
    assert selection_key({}, "auc", 4) > selection_key({}, "auc", 3)  # no validation: last
    assert set(SELECTION_RULES) == {"loss", "auc", "f1+auc", "last"}
    with pytest.raises(ValueError, match="selection must be one of"):
        selection_key(m, "accuracy", 0)


@pytest.mark.parametrize("rule", ["loss", "auc", "f1+auc"])
def test_fit_selects_by_rule(tiny_dataset, rule):
    result = fit(_abmil(), tiny_dataset, epochs=5, lr=3e-3, selection=rule, progress=False)
    keys = [
        selection_key({k[4:]: v for k, v in h.items() if k.startswith("val_")}, rule, int(h["epoch"]))
        for h in result.history
    ]
    assert result.best_epoch == max(range(len(keys)), key=keys.__getitem__)
    assert result.recipe["selection"] == rule == result.recipe["selection_used"]


def test_last_selection_and_empty_validation_mean_last_epoch(tiny_dataset):
    result = fit(_abmil(), tiny_dataset, epochs=4, lr=3e-3, selection="last", progress=False)
    assert result.best_epoch == 3 and "val_nll" in result.history[0]

    no_val = _copy_dataset(tiny_dataset, val=[])
    result = fit(_abmil(), no_val, epochs=4, lr=3e-3, selection="auc", patience=1, progress=False)
    assert result.best_epoch == 3 and len(result.history) == 4
    assert result.recipe["selection_used"] == "last" and result.val_metrics == {}


def _copy_dataset(dataset, **splits):
    clone = type(dataset).__new__(type(dataset))
    clone.__dict__.update(dataset.__dict__)
    clone._bags = dict(dataset._bags)
    clone.splits = [dict(dataset.splits[0], **splits)]
    return clone


def test_patience_stops_early(tiny_dataset):
    # flipped validation labels: the better the model, the worse its validation loss
    import dataclasses

    flipped = _copy_dataset(tiny_dataset)
    for sid in tiny_dataset.split("val"):
        flipped._bags[sid] = dataclasses.replace(flipped._bags[sid], label=1 - flipped._bags[sid].label)
    result = fit(_abmil(), flipped, epochs=30, lr=1e-3, patience=2, progress=False)
    assert len(result.history) < 30
    assert len(result.history) - 1 - result.best_epoch == 2


def test_evaluate_model_outputs(tiny_dataset):
    out = evaluate_model(_abmil(), tiny_dataset, "test")
    assert out["probs"].shape == (6, 2) and np.allclose(out["probs"].sum(1), 1.0)
    assert out["labels"].tolist() == [tiny_dataset.label(s) for s in tiny_dataset.split("test")]
    assert out["slides_per_s"] > 0
    assert {"accuracy", "auc", "f1", "f1_macro", "ece", "nll"} <= set(out)


def test_count_flops_grows_linearly_for_abmil(tiny_dataset):
    model = _abmil()
    bag = tiny_dataset.load(tiny_dataset.slide_ids()[0], hr=False)
    f1 = count_flops(model, collate([bag]))
    bag2 = type(bag)(
        slide_id="x",
        features=np.concatenate([bag.features, bag.features]),
        coords=np.concatenate([bag.coords, bag.coords]),
        label=bag.label,
        class_names=bag.class_names,
        meta=bag.meta,
    )
    f2 = count_flops(model, collate([bag2]))
    cfg: ABMILConfig = model.config
    per_instance = 2 * (32 * cfg.hidden + 2 * cfg.hidden * cfg.attn_dim + cfg.attn_dim + cfg.hidden)
    assert f2 - f1 == pytest.approx(bag.n * per_instance, rel=0.01)


def test_count_flops_asmil_and_keeps_trainable(tiny_dataset):
    """ASMIL's expanded query parameters once made FlopCounterMode fail (its FLOPs were unknown)."""
    import zoo

    model = zoo.create_model("asmil", in_dim=32, hidden=16, heads=2, n_token=4, token_drop=1)
    bag = tiny_dataset.load(tiny_dataset.slide_ids()[0], hr=False)
    assert count_flops(model, collate([bag])) > 2 * bag.n * 32 * 16
    assert all(p.requires_grad for p in model.parameters()) and model.training


class _CountingABMIL(ABMIL):
    family = "abmil"
    seen_hr: bool = False

    def __init__(self, config):
        super().__init__(config)
        self.steps = 0

    def after_optimizer_step(self) -> None:
        self.steps += 1

    def loss(self, batch):
        self.seen_hr = self.seen_hr or "hr_features" in batch
        return super().loss(batch)


def test_hook_called_per_step_and_hr_loaded_only_when_needed(tiny_dataset):
    lr_model = _CountingABMIL(ABMILConfig(in_dim=32))
    fit(lr_model, tiny_dataset, epochs=2, progress=False)
    assert lr_model.steps == 2 * len(tiny_dataset.split("train"))
    assert not lr_model.seen_hr
    hr_model = _CountingABMIL(ABMILConfig(in_dim=32, view="hr"))
    result = fit(hr_model, tiny_dataset, epochs=1, progress=False)
    assert hr_model.seen_hr and result.test_metrics["accuracy"] >= 0


def test_max_slides_eval_every_and_tensorboard(tiny_dataset, tmp_path):
    result = fit(
        _abmil(), tiny_dataset, epochs=3, max_slides=4, eval_every=2, log_dir=tmp_path, progress=False
    )
    assert "val_accuracy" in result.history[0] and "val_accuracy" not in result.history[1]
    assert "val_accuracy" in result.history[2]  # the last epoch is always validated
    assert result.test_probs.shape[0] == 4
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_fit_three_classes(tiny_dataset_3c):
    result = fit(_abmil(num_classes=3), tiny_dataset_3c, epochs=12, lr=1e-3, progress=False)
    assert "f1" not in result.test_metrics and "f1_macro" in result.test_metrics
    assert result.test_probs.shape[1] == 3
    assert result.val_metrics["accuracy"] > 1 / 3


def test_bad_arguments(tiny_dataset):
    with pytest.raises(ValueError, match="epochs"):
        fit(_abmil(), tiny_dataset, epochs=0, progress=False)
    with pytest.raises(ValueError, match="eval_every"):
        fit(_abmil(), tiny_dataset, epochs=1, eval_every=0, progress=False)
    with pytest.raises(ValueError, match="selection must be one of"):
        fit(_abmil(), tiny_dataset, epochs=1, selection="acc", progress=False)
    with pytest.raises(ValueError, match="patience"):
        fit(_abmil(), tiny_dataset, epochs=1, patience=0, progress=False)


def test_train_and_save_writes_metrics(tiny_dataset, tmp_path):
    pytest.importorskip("zoo.hub")
    from zoo.train import train_and_save

    out = train_and_save("abmil", tiny_dataset, out_dir=tmp_path / "m", epochs=2, progress=False)
    record = json.loads((out / "metrics.json").read_text())
    assert record["architecture"] == "abmil" and record["dataset"] == tiny_dataset.name
    assert record["params"] > 0 and record["recipe"]["epochs"] == 2
    assert set(record["test"]) >= {"accuracy", "auc", "f1_macro", "ece", "slides_per_s"}
    assert (out / "config.json").exists()
    rows = (out / "test_predictions.csv").read_text().splitlines()
    assert rows[0] == "slide_id,label,prob_class0,prob_class1"
    test_ids = tiny_dataset.split("test")
    assert [r.split(",")[0] for r in rows[1:]] == test_ids
    assert [r.split(",")[1] for r in rows[1:]] == [f"class{tiny_dataset.label(s)}" for s in test_ids]
    probs = np.array([[float(x) for x in r.split(",")[2:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
