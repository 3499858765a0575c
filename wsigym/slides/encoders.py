"""Pluggable patch encoders: ``uint8 (B, H, W, 3)`` images -> ``float32 (B, dim)`` features.

Any object with the :class:`PatchEncoder` attributes works. Two builders wrap real models:

- :func:`timm_encoder`: ``timm.create_model(name, pretrained=False, num_classes=0)`` then, optionally,
  a local safetensors / ``.bin`` / ``.pth`` file loaded with strict key checks (classifier-head keys of
  the file are dropped, since the encoder has no head); ``hub_id="hf-hub:org/name"`` downloads weights
  from the Hugging Face Hub, only when asked.
- :func:`open_clip_encoder`: the image tower of an open_clip model, random weights unless ``pretrained``
  names a local checkpoint (strict) or an open_clip pretrained tag / ``hf-hub:`` id.

Preprocessing inside the encoder: resize to ``input_size`` (bilinear, antialiased), scale to [0, 1],
``(x - mean) / std`` per channel. No pickle: ``torch.load(..., weights_only=True)`` for ``.bin``/``.pth``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from wsigym.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class PatchEncoder(Protocol):
    """What the feature extractor needs from an encoder."""

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """``uint8 (B, H, W, 3)`` -> ``float32 (B, dim)``."""
        ...


def safe_name(text: str) -> str:
    """A folder-safe encoder name: ``hf-hub:org/x`` -> ``hf-hub_org_x``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


class TorchPatchEncoder:
    """Wrap an ``nn.Module`` mapping normalised ``(B, 3, S, S)`` images to ``(B, dim)`` features.

    Args:
        module: the network (put in eval mode; run under ``torch.inference_mode``).
        name: encoder name (used in folder names ``features_<name>``).
        input_size: side ``S`` the images are resized to.
        mean, std: per-channel normalisation of [0, 1] images.
        forward: optional callable ``module, x -> features`` (default ``module(x)``).
        device: torch device.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        name: str,
        input_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        forward: Any = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.module = module.eval().to(device)
        self.name = safe_name(name)
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.device = torch.device(device)
        self._forward = forward
        self._mean_t = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            probe = self._run(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device))
        if probe.ndim != 2:
            raise ValueError(
                f"encoder {name!r} must return (B, dim) features, got shape {tuple(probe.shape)}"
            )
        self.dim = int(probe.shape[1])

    def to(self, device: str | torch.device) -> TorchPatchEncoder:
        """Move the network and the normalisation to ``device`` (in place; returns ``self``)."""
        self.device = torch.device(device)
        self.module.to(self.device)
        self._mean_t, self._std_t = self._mean_t.to(self.device), self._std_t.to(self.device)
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.module, x) if self._forward is not None else self.module(x)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """``uint8 (B, H, W, 3)`` -> normalised ``float32 (B, 3, S, S)``."""
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got {arr.dtype} {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return (x - self._mean_t) / self._std_t

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            out = self._run(self.preprocess(images))
        return out.float().cpu().numpy().astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"TorchPatchEncoder(name={self.name!r}, dim={self.dim}, input_size={self.input_size})"


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.bin``/``.pth``/``.pt`` file via ``weights_only=True``.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and strips a ``module.`` prefix.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(p, f"cannot read weights ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(p, "expected a mapping of parameter names to tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _load_strict(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, drop_prefixes: Sequence[str]
):
    own = model.state_dict()
    dropped = [k for k in sd if k not in own and any(k.startswith(p) for p in drop_prefixes)]
    sd = {k: v for k, v in sd.items() if k not in dropped}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)})")
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )
        if shape:
            parts.append(f"shape mismatch for {shape[:5]}")
        raise DataError(source, "weights do not match the model: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def timm_encoder(
    model_name: str,
    pretrained_path: str | os.PathLike[str] | None = None,
    hub_id: str | None = None,
    *,
    device: str | torch.device = "cpu",
    name: str | None = None,
    **model_kwargs: Any,
) -> TorchPatchEncoder:
    """A timm backbone as a patch encoder (pooled features, ``num_classes=0``).

    Args:
        model_name: any ``timm.create_model`` name, e.g. ``"vit_small_patch16_224"``.
        pretrained_path: local weights (``.safetensors`` or ``.bin``/``.pth``), strict key check.
        hub_id: ``"hf-hub:org/repo"`` (or ``"org/repo"``) to download timm weights; only when given.
        device: torch device.
        name: encoder name for folders (default: the model name / hub id).
        **model_kwargs: forwarded to ``timm.create_model`` (e.g. ``img_size=64`` for a fast tiny ViT).
    """
    import timm

    if hub_id is not None and pretrained_path is not None:
        raise ValueError("give either pretrained_path or hub_id, not both")
    if hub_id is not None:
        hub = hub_id if hub_id.startswith("hf-hub:") else f"hf-hub:{hub_id}"
        model = timm.create_model(hub, pretrained=True, num_classes=0, **model_kwargs)
        label = name or hub
    else:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        label = name or model_name
        if pretrained_path is not None:
            sd = load_state_dict_file(pretrained_path)
            head = model.default_cfg.get("classifier", "head")
            heads = [head] if isinstance(head, str) else list(head)
            _load_strict(model, sd, str(pretrained_path), [h + "." for h in heads])
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)  # ViTs built for one size
    if fixed is not None and getattr(model.patch_embed, "strict_img_size", True):
        size = int(fixed[0] if isinstance(fixed, tuple | list) else fixed)
    return TorchPatchEncoder(
        model,
        name=label,
        input_size=size,
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
        device=device,
    )


def open_clip_encoder(
    model_name: str,
    pretrained: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    name: str | None = None,
    **model_kwargs: Any,
) -> TorchPatchEncoder:
    """The image tower of an open_clip model as a patch encoder (``encode_image``, not normalised).

    Args:
        model_name: an open_clip config name (``"ViT-B-32"``) or ``"hf-hub:org/repo"``.
        pretrained: None (random weights, no download); a local checkpoint file (strict keys,
            ``weights_only``); or an open_clip pretrained tag (``"openai"``), which downloads.
        **model_kwargs: forwarded to ``open_clip.create_model`` (e.g. ``force_image_size=64``).
    """
    import open_clip

    local = pretrained is not None and Path(pretrained).is_file()
    kwargs = dict(model_kwargs)
    if not model_name.startswith("hf-hub:"):
        kwargs.setdefault("pretrained_text", False)  # HF text towers would download otherwise
    model = open_clip.create_model(
        model_name, pretrained=None if (pretrained is None or local) else str(pretrained), **kwargs
    )
    if local:
        try:
            open_clip.load_checkpoint(model, str(pretrained), strict=True, weights_only=True)
        except RuntimeError as e:
            raise DataError(
                str(pretrained), f"weights do not match open_clip model {model_name!r}: {e}"
            ) from e
    visual = model.visual
    size = visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return TorchPatchEncoder(
        model,
        name=name or f"{model_name}" + ("" if pretrained is None else f"_{Path(str(pretrained)).stem}"),
        input_size=size,
        mean=mean,
        std=std,
        forward=lambda m, x: m.encode_image(x),
        device=device,
    )


def build_encoder(
    spec: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    **model_kwargs: Any,
) -> TorchPatchEncoder:
    """Parse ``"timm:NAME"``, ``"timm:hf-hub:ORG/REPO"`` or ``"open_clip:NAME"`` (the CLI's ``--encoder``).

    ``weights`` is a local file (timm) or a checkpoint / pretrained tag (open_clip).
    """
    kind, _, rest = spec.partition(":")
    if not rest:
        raise ValueError(f"encoder must look like 'timm:NAME' or 'open_clip:NAME', got {spec!r}")
    if kind == "timm":
        if rest.startswith("hf-hub:"):
            if weights is not None:
                raise ValueError("--weights cannot be combined with an hf-hub: timm encoder")
            return timm_encoder(rest, hub_id=rest, device=device, **model_kwargs)
        return timm_encoder(rest, weights, device=device, **model_kwargs)
    if kind in ("open_clip", "openclip"):
        return open_clip_encoder(rest, weights, device=device, **model_kwargs)
    raise ValueError(f"unknown encoder kind {kind!r} in {spec!r}; use 'timm:' or 'open_clip:'")
