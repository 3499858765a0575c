"""LRMIL in feature space: distillation targets, projector stage, student loss terms, two-stage fit."""

from __future__ import annotations

import json

import torch

from zoo.batch import collate
from zoo.models.abmil import ABMIL
from zoo.models.lrmil import LRMIL, child_weights, distillation_targets
from zoo.registry import create_model, model_from_config_dict
from zoo.train_lrmil import fit_lrmil, train_projector


def _student(**kw) -> LRMIL:
    torch.manual_seed(0)
    cfg = dict(in_dim=32, hidden=32, attn_dim=16, proj_hidden=32)
    cfg.update(kw)
    model = create_model("lrmil", **cfg)
    assert isinstance(model, LRMIL)
    return model


def _teacher() -> ABMIL:
    torch.manual_seed(1)
    model = create_model("abmil", in_dim=32, hidden=32, attn_dim=16, view="hr")
    assert isinstance(model, ABMIL)
    return model


def test_child_weights_and_targets():
    mask = torch.tensor([[[True, True, False, False], [True, True, True, True]]])
    uniform = child_weights(None, mask)
    torch.testing.assert_close(uniform, torch.tensor([[[0.5, 0.5, 0, 0], [0.25] * 4]]))
    att = torch.tensor([[[0.2, 0.6, 0.9, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    w = child_weights(att, mask)  # invalid child ignored; all-zero parent -> uniform
    torch.testing.assert_close(w, torch.tensor([[[0.25, 0.75, 0, 0], [0.25] * 4]]))
    u = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(1, 2, 4, 3)
    t = distillation_targets(u, w)
    torch.testing.assert_close(t[0, 0], 0.25 * u[0, 0, 0] + 0.75 * u[0, 0, 1])
    torch.testing.assert_close(t[0, 1], u[0, 1].mean(0))


def test_forward_reads_low_res_only_and_pads(check_padding_invariance, tiny_dataset):
    model = _student()
    assert model.input_view == "lr" and model.needs_hr
    check_padding_invariance(model, 32)
    bag = tiny_dataset.load(tiny_dataset.split("test")[0], hr=False)
    out = model.predict(collate([bag], hr=False))
    assert out["logits"].shape == (1, 2) and out["instance_logits"].shape == (1, bag.n, 2)


def test_teacher_is_not_saved_and_config_round_trips():
    model = _student().set_teacher(_teacher())
    assert model.teacher is not None
    assert not any(k.startswith("_teacher") for k in model.state_dict())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    clone = model_from_config_dict(json.loads(json.dumps(model.config_dict())))
    clone.load_state_dict(model.state_dict(), strict=True)
    assert clone.teacher is None


def test_loss_terms_with_and_without_teacher(tiny_dataset):
    bags = [tiny_dataset.load(s) for s in tiny_dataset.split("train")[:3]]
    batch = collate(bags)
    model = _student()
    alone = model.loss(batch)
    assert alone["kd_bag"] == 0 and alone["kd_attn"] == 0 and alone["inst"] == 0
    torch.testing.assert_close(alone["loss"], alone["ce"])
    model.set_teacher(_teacher())
    out = model.loss(batch)
    for key in ("ce", "kd_bag", "kd_attn", "inst"):
        assert torch.isfinite(out[key]) and out[key] > 0, key
    c = model.config
    expect = c.lambda_ce * out["ce"] + c.lambda_bag * out["kd_bag"] + c.lambda_attn * out["kd_attn"]
    torch.testing.assert_close(out["loss"], expect + c.lambda_inst * out["inst"])
    out["loss"].backward()
    assert model.instance_classifier.weight.grad is not None
    assert model.projector.mlp[0].weight.grad is None  # frozen in stage 2 by default
    # guided attention: per-parent mean of the teacher's child attention, renormalised, 0 on padding
    t_out = model.teacher_outputs(batch)
    guide = model.guided_attention(t_out["child_attention"], batch)
    torch.testing.assert_close(guide.sum(-1), torch.ones(3))
    assert torch.all(guide[~batch["mask"]] == 0)


def test_bag_kd_is_zero_when_student_copies_teacher(tiny_dataset):
    batch = collate([tiny_dataset.load(tiny_dataset.split("train")[0])])
    model = _student(lambda_ce=0.0, lambda_attn=0.0, lambda_inst=0.0).set_teacher(_teacher())
    teacher_logits = model.teacher_outputs(batch)["logits"]
    with torch.no_grad():  # make the student output exactly the teacher's logits
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(teacher_logits[0])
    torch.testing.assert_close(model.loss(batch)["loss"], torch.tensor(0.0), atol=1e-6, rtol=0)


def test_projector_stage_reduces_distillation_error(tiny_dataset):
    model = _student().set_teacher(_teacher())
    batch = collate([tiny_dataset.load(s) for s in tiny_dataset.split("val")])
    before = model.projector_loss(batch).item()
    history = train_projector(model, tiny_dataset, epochs=15, lr=3e-3, progress=False)
    after = model.projector_loss(batch).item()
    assert history[-1] < history[0] and after < before, (history, before, after)


def test_fit_lrmil_two_stages(tiny_dataset):
    teacher = _teacher()
    result = fit_lrmil(
        tiny_dataset,
        teacher,
        epochs_stage1=2,
        epochs_stage2=2,
        progress=False,
        config={"hidden": 32, "attn_dim": 16, "proj_hidden": 32},
        lr=1e-3,
    )
    model = result.model
    assert isinstance(model, LRMIL) and model.teacher is teacher and len(result.history) == 2
    batch = collate([tiny_dataset.load(s, hr=False) for s in tiny_dataset.split("test")], hr=False)
    assert model.predict_proba(batch).shape == (len(tiny_dataset.split("test")), 2)


def test_student_trains_with_distillation(tiny_dataset):
    teacher = _teacher()
    opt_t = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    train = [tiny_dataset.load(s) for s in tiny_dataset.split("train")]
    for _ in range(5):  # a quickly trained teacher, so its attention means something
        for bag in train:
            loss = teacher.loss(collate([bag]))["loss"]
            opt_t.zero_grad()
            loss.backward()
            opt_t.step()
    model = _student().set_teacher(teacher)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        total = 0.0
        for bag in train:
            out = model.loss(collate([bag]))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            total += out["loss"].item()
        losses.append(total / len(train))
    assert losses[-1] < 0.6 * losses[0], losses
