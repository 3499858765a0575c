"""Base classes of every zoo model: a config dataclass, a forward contract, a loss.

A :class:`ZooModel` is an ``nn.Module`` built from one config dataclass; the config round-trips
through ``config.json`` and the weights through ``model.safetensors`` (see :mod:`zoo.hub`).
A :class:`MILModel` classifies a slide bag: ``forward`` returns at least ``logits (B, C)`` and
``attention (B, N_in)`` (softmax weights over its input instances, in input order).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

InputView = Literal["lr", "hr", "hier"]


@dataclass
class ZooConfig:
    """Fields shared by every model config; families subclass it."""

    in_dim: int = 384


@dataclass
class MILConfig(ZooConfig):
    num_classes: int = 2


class ZooModel(nn.Module):
    """A model whose architecture is fully described by ``self.config``.

    Subclasses set ``family`` (registry name) and ``config_class``.
    """

    family: ClassVar[str] = ""
    config_class: ClassVar[type[ZooConfig]] = ZooConfig

    def __init__(self, config: ZooConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable config, with the ``architecture`` key that :mod:`zoo.registry` reads."""
        return {"architecture": self.family, **dataclasses.asdict(self.config)}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ card) into ``directory``; see :func:`zoo.hub.save_pretrained`."""
        from zoo import hub

        return hub.save_pretrained(self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload to the Hub; see :func:`zoo.hub.push_to_hub`."""
        from zoo import hub

        return hub.push_to_hub(self, repo_id, **kwargs)


class MILModel(ZooModel):
    """Slide classifier over a bag of instance features.

    ``input_view`` says which features of a batch (see :func:`zoo.batch.collate`) the model reads:

    - ``"lr"``: low-res features ``(B, N, d)`` with ``mask (B, N)``;
    - ``"hr"``: high-res children flattened to instances ``(B, N*k, d)``;
    - ``"hier"``: high-res children grouped by parent ``(B, N, k, d)`` (HAFED).
    """

    config_class: ClassVar[type[ZooConfig]] = MILConfig
    #: True when the model reads high-res keys of a batch although ``input_view`` is ``"lr"``
    #: (the trainer then loads bags with ``hr=True``; ``"hr"``/``"hier"`` views always do).
    needs_hr: ClassVar[bool] = False

    @property
    def input_view(self) -> InputView:
        """``config.view`` for families over a flat bag (``"lr"`` or ``"hr"``); ``"lr"`` when the config
        has no ``view``. Hierarchical families (HAFED, WISE-FUSE) override it with ``"hier"``."""
        view = getattr(self.config, "view", "lr")
        if view not in ("lr", "hr"):
            raise ValueError(f"{type(self).__name__}: config.view must be 'lr' or 'hr', got {view!r}")
        return view

    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Select the forward arguments of this model from a collated batch."""
        if self.input_view == "lr":
            return {"features": batch["features"], "mask": batch["mask"], "coords": batch["coords"]}
        if "hr_features" not in batch:
            raise KeyError(
                f"{type(self).__name__} reads high-res features, but the batch has no 'hr_features'"
            )
        u, child_mask = batch["hr_features"], batch["hr_mask"]
        if self.input_view == "hr":
            valid = child_mask & batch["mask"][..., None]
            b, n, k, d = u.shape
            coords = batch["hr_coords"].reshape(b, n * k, 2) if "hr_coords" in batch else None
            return {"features": u.reshape(b, n * k, d), "mask": valid.reshape(b, n * k), "coords": coords}
        return {"features": u, "mask": batch["mask"], "child_mask": child_mask}

    def predict(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Forward pass on a collated batch."""
        return self(**self.inputs(batch))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training loss on a batch: ``{"loss": total, <component>: value, ..., "logits": (B, C)}``.

        The default is cross-entropy of the slide label; families add their auxiliary terms.
        """
        out = self.predict(batch)
        ce = F.cross_entropy(out["logits"], batch["label"])
        return {"loss": ce, "ce": ce, "logits": out["logits"].detach()}

    def after_optimizer_step(self) -> None:
        """Hook the trainer calls after every optimiser step (e.g. ASMIL's EMA anchor); no-op here."""

    def prepare_for(self, dataset: Any) -> None:
        """Hook the trainer calls once before training on ``dataset`` (e.g. WISE-FUSE's class text
        embeddings); no-op here."""

    @torch.no_grad()
    def predict_proba(self, batch: dict[str, Tensor]) -> Tensor:
        """Class probabilities ``(B, C)`` in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return torch.softmax(self.predict(batch)["logits"], dim=-1)
        finally:
            self.train(was_training)
