"""WISE-FUSE (reconstruction): VLM selection, attention outside the kept set, padding, text path, training."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from wsigym.errors import DataError
from zoo.batch import collate
from zoo.models.wisefuse import (
    WiseFuse,
    kept_count,
    load_class_descriptions,
    text_embeddings_for_dataset,
    text_embeddings_from_open_clip,
)
from zoo.registry import create_model, model_from_config_dict

VLM_DIM = 8
# a tiny open_clip model (random weights, ~1.6 M parameters in the token embedding): nothing is downloaded
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _vlm_map() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(32, VLM_DIM)).astype(np.float32)


def _text() -> torch.Tensor:
    """Class 0: a random direction; class 1: where the shifted (positive) patches of the tiny dataset point."""
    shift = np.zeros(32, np.float32)
    shift[:16] = 1.0
    other = np.random.default_rng(8).normal(size=VLM_DIM).astype(np.float32)
    return torch.tensor(np.stack([other, shift @ _vlm_map()]))


def _with_vlm(bag):
    """The bag with a simulated low-res VLM view: a fixed linear map of its features plus noise."""
    rng = np.random.default_rng(int(bag.slide_id[1:]))
    vlm = bag.features @ _vlm_map() + 0.3 * rng.normal(size=(bag.n, VLM_DIM)).astype(np.float32)
    return dataclasses.replace(bag, views={"vlm": vlm})


def _model(**kw) -> WiseFuse:
    torch.manual_seed(0)
    cfg = dict(in_dim=32, vlm_dim=VLM_DIM, hidden=32, attn_dim=16, heads=2)
    cfg.update(kw)
    model = create_model("wisefuse", **cfg)
    assert isinstance(model, WiseFuse)
    return model.set_text_embeddings(_text())


def _random_slide(n: int, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    child_mask = torch.rand(n, k, generator=g) > 0.3
    child_mask[:, 0] = True
    return torch.randn(n, k, 32, generator=g), child_mask, torch.randn(n, VLM_DIM, generator=g)


def _single(model, u: torch.Tensor, child_mask: torch.Tensor, vlm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of ``model`` on one slide ``u (N, k, d)``, batched as ``u[None]`` and unbatched back."""
    return {key: t[0] for key, t in model(u[None], child_mask=child_mask[None], vlm=vlm[None]).items()}


@pytest.mark.parametrize("n", [1, 3, 8, 13, 40])
@pytest.mark.parametrize("keep_frac", [0.25, 0.3, 1.0])
def test_keeps_ceil_fraction_and_attention_is_zero_elsewhere(n, keep_frac):
    model = _model(keep_frac=keep_frac).eval()
    u, cm, v = _random_slide(n, seed=n)
    with torch.no_grad():
        out = _single(model, u, cm, v)
    m = math.ceil(round(keep_frac * n, 9))
    assert kept_count(keep_frac, n) == m
    assert int(out["selected"].sum()) == m
    assert torch.all(out["attention"][~out["selected"]] == 0)
    assert torch.all(out["attention"][out["selected"]] > 0)
    torch.testing.assert_close(out["attention"].sum(), torch.tensor(1.0))
    # the kept patches are the m best by VLM relevance
    if m < n:
        assert out["scores"][out["selected"]].min() >= out["scores"][~out["selected"]].max()
    assert out["logits"].shape == (2,) and out["attention"].shape == (n,)


@pytest.mark.parametrize(
    ("fusion", "hr_pool", "score_rule"),
    [("cross_attention", "mean", "max_foreground"), ("film", "attention", "margin"), ("none", "mean", "max")],
)
def test_unkept_high_res_is_never_read_and_padding_is_invariant(fusion, hr_pool, score_rule):
    model = _model(fusion=fusion, hr_pool=hr_pool, score_rule=score_rule).eval()
    ua, cma, va = _random_slide(9, seed=1)
    ub, cmb, vb = _random_slide(17, seed=2)
    with torch.no_grad():
        a, b = _single(model, ua, cma, va), _single(model, ub, cmb, vb)
        # garbage in the high-res features of patches that were not kept changes nothing
        ua2 = ua.clone()
        ua2[~a["selected"]] = 1e3
        torch.testing.assert_close(_single(model, ua2, cma, va)["logits"], a["logits"])
        feats = torch.full((2, 17, 4, 32), 100.0)
        feats[0, :9], feats[1] = ua, ub
        cm = torch.ones(2, 17, 4, dtype=torch.bool)
        cm[0, :9], cm[1] = cma, cmb
        vlm = torch.full((2, 17, VLM_DIM), 5.0)
        vlm[0, :9], vlm[1] = va, vb
        mask = torch.zeros(2, 17, dtype=torch.bool)
        mask[0, :9], mask[1] = True, True
        batched = model(feats, mask=mask, child_mask=cm, vlm=vlm)
    for key in ("logits", "attention", "selected"):
        torch.testing.assert_close(batched[key][0][: a[key].shape[0]], a[key], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched[key][1], b[key], atol=1e-5, rtol=1e-4)
    assert torch.all(batched["attention"][0, 9:] == 0) and not batched["selected"][0, 9:].any()
    assert int(batched["selected"][0].sum()) == math.ceil(0.25 * 9)


def test_text_embeddings_are_required_saved_and_round_trip():
    torch.manual_seed(0)
    bare = create_model("wisefuse", in_dim=32, vlm_dim=VLM_DIM)
    u, cm, v = _random_slide(5)
    with pytest.raises(RuntimeError, match="text_embeddings are not set"):
        _single(bare, u, cm, v)
    with pytest.raises(ValueError, match="expected shape"):
        bare.set_text_embeddings(torch.ones(3, VLM_DIM))
    model = _model()
    assert "text_embeddings" in model.state_dict()
    torch.testing.assert_close(model.text_embeddings.norm(dim=-1), torch.ones(2))
    clone = model_from_config_dict(json.loads(json.dumps(model.config_dict())))
    clone.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(
        _single(clone.eval(), u, cm, v)["logits"], _single(model.eval(), u, cm, v)["logits"]
    )
    with pytest.raises(ValueError, match="background_classes"):
        create_model("wisefuse", num_classes=2, background_classes=[0, 1])


def test_shipped_descriptions_and_bad_files(tmp_path):
    d = load_class_descriptions("camelyon16")
    assert set(d) == {"normal", "tumour"} and all(len(v) >= 3 for v in d.values())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"normal": []}))
    with pytest.raises(DataError, match=r"bad\.json"):
        load_class_descriptions(bad)
    with pytest.raises(DataError, match="camelyon16"):
        load_class_descriptions("no-such-set")


def test_tiny_open_clip_text_path_offline():
    torch.manual_seed(0)
    d = load_class_descriptions("camelyon16")
    emb = text_embeddings_from_open_clip(TINY_CLIP, d, class_names=["tumour", "normal"])
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1])
    with pytest.raises(KeyError, match="lymphoma"):
        text_embeddings_from_open_clip(TINY_CLIP, d, class_names=["lymphoma"])
    model = create_model("wisefuse", in_dim=32, vlm_dim=16).set_text_embeddings(emb)
    u, cm, _ = _random_slide(6)
    assert _single(model, u, cm, torch.randn(6, 16))["logits"].shape == (2,)


def test_dataset_text_embeddings_hook():
    class WithText:
        def vlm_text_embeddings(self):
            return np.eye(2, VLM_DIM, dtype=np.float32)

    torch.testing.assert_close(text_embeddings_for_dataset(WithText()), torch.eye(2, VLM_DIM))
    with pytest.raises(ValueError, match="vlm_text_embeddings"):
        text_embeddings_for_dataset(object())


def test_trains_on_tiny_bags(tiny_dataset):
    train = [_with_vlm(b) for b in tiny_dataset.bags("train")]
    model = _model()
    batch = collate(train[:4])
    with pytest.raises(KeyError, match="vlm"):
        model.inputs({k: v for k, v in batch.items() if k != "vlm"})
    out = model.predict(batch)
    assert out["attention"].shape == batch["mask"].shape
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        total = 0.0
        for bag in train:
            loss = model.loss(collate([bag]))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / len(train))
    assert losses[-1] < 0.5 * losses[0], losses


def test_train_and_save_takes_vlm_width_and_text_embeddings_from_the_dataset(tmp_path):
    """``train_and_save`` reads ``vlm_dim`` from the bags and ``fit`` calls ``prepare_for``: WISE-FUSE
    trains on synth-c16-tiny without manual steps, and the saved model reloads with its embeddings."""
    from wsigym.data.formats import open_dataset
    from zoo import hub
    from zoo.train import train_and_save

    dataset = open_dataset("synth-c16-tiny", progress=False)
    out = train_and_save(
        "wisefuse",
        dataset,
        out_dir=tmp_path / "run",
        epochs=1,
        max_slides=4,
        progress=False,
        config={"hidden": 16},
    )
    model = hub.load(str(out))
    assert model.config.vlm_dim == dataset.config.vlm_dim
    want = torch.nn.functional.normalize(torch.as_tensor(dataset.vlm_text_embeddings()), dim=-1)
    torch.testing.assert_close(model.text_embeddings, want)


def test_cli_train_wisefuse_with_an_open_clip_model(tmp_path):
    """``zoo train wisefuse --clip CONFIG.json``: the class text embeddings come from that open_clip model
    (here a tiny random one, seeded by ``--seed``), not from the dataset's simulated VLM."""
    from wsigym.data.formats import open_dataset
    from zoo import hub
    from zoo.cli import main as zoo_main

    dataset = open_dataset("synth-c16-tiny", progress=False)
    cfg = {**TINY_CLIP, "embed_dim": dataset.config.vlm_dim}
    cfg_path = tmp_path / "clip.json"
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    argv = ["train", "wisefuse", "--dataset", "synth-c16-tiny", "--epochs", "1", "--seed", "3"]
    assert zoo_main([*argv, "--clip", str(cfg_path), "--config", "hidden=16", "--out", str(out)]) == 0
    torch.manual_seed(3)
    want = text_embeddings_from_open_clip(
        cfg, load_class_descriptions("camelyon16"), class_names=list(dataset.class_names)
    )
    model = hub.load(str(out))
    torch.testing.assert_close(model.text_embeddings, want)
    own = torch.nn.functional.normalize(torch.as_tensor(dataset.vlm_text_embeddings()), dim=-1)
    assert not torch.allclose(model.text_embeddings, own)
    with pytest.raises(SystemExit, match="wisefuse only"):
        zoo_main(["train", "abmil", "--dataset", "synth-c16-tiny", "--clip", str(cfg_path)])
