from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wsigym.errors import DataError
from wsigym.slides.encoders import PatchEncoder, build_encoder, open_clip_encoder, timm_encoder


def _images(n: int = 3, size: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_timm_encoder_shapes_and_determinism(tiny_encoder):
    assert isinstance(tiny_encoder, PatchEncoder)
    assert tiny_encoder.dim == 192 and tiny_encoder.input_size == 32
    f = tiny_encoder(_images())
    assert f.shape == (3, 192) and f.dtype == np.float32 and np.isfinite(f).all()
    assert np.array_equal(f, tiny_encoder(_images()))
    assert tiny_encoder(np.zeros((0, 256, 256, 3), np.uint8)).shape == (0, 192)
    with pytest.raises(ValueError, match="uint8"):
        tiny_encoder(np.zeros((1, 256, 256, 3), np.float32))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_timm_local_weights_round_trip(tmp_path, tiny_encoder, suffix):
    path = tmp_path / f"weights{suffix}"
    sd = {k: v.clone() for k, v in tiny_encoder.module.state_dict().items()}
    sd["head.weight"] = torch.zeros(1000, 192)  # a classifier head in the file is dropped
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    other = timm_encoder("vit_tiny_patch16_224", path, img_size=32)
    x = _images(2)
    assert np.allclose(other(x), tiny_encoder(x), atol=1e-6)


def test_timm_weights_mismatch_is_a_clear_error(tmp_path, tiny_encoder):
    path = tmp_path / "bad.safetensors"
    sd = dict(tiny_encoder.module.state_dict())
    sd.pop("cls_token")
    sd["extra.weight"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(DataError, match=r"missing keys \['cls_token'\].*unexpected keys \['extra.weight'\]"):
        timm_encoder("vit_tiny_patch16_224", path, img_size=32)
    with pytest.raises(DataError, match="not found"):
        timm_encoder("vit_tiny_patch16_224", tmp_path / "nope.safetensors", img_size=32)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read weights"):
        timm_encoder("vit_tiny_patch16_224", junk, img_size=32)


def test_open_clip_image_tower_random_and_local(tmp_path):
    import open_clip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    cfg_path = tmp_path / "wsigym-tiny-clip.json"
    cfg_path.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    enc = open_clip_encoder("wsigym-tiny-clip")
    assert enc.dim == 32 and enc.input_size == 32
    f = enc(_images(2))
    assert f.shape == (2, 32) and np.isfinite(f).all()
    wpath = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in enc.module.state_dict().items()}, str(wpath))
    again = open_clip_encoder("wsigym-tiny-clip", wpath)
    assert np.allclose(again(_images(2)), f, atol=1e-5)
    assert build_encoder("open_clip:wsigym-tiny-clip", wpath).dim == 32


def test_build_encoder_specs():
    enc = build_encoder("timm:resnet10t")
    assert enc.name == "resnet10t" and enc.dim == 512
    with pytest.raises(ValueError, match="timm:NAME"):
        build_encoder("resnet10t")
    with pytest.raises(ValueError, match="unknown encoder kind"):
        build_encoder("keras:resnet")
