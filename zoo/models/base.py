"""Base classes of every zoo model: a config dataclass, a forward contract, a loss.

A :class:`ZooModel` is an ``nn.Module`` built from one config dataclass; the config round-trips
through ``config.json`` and the weights through ``model.safetensors`` (see :mod:`zoo.hub`).
A :class:`MILModel` classifies a slide bag: ``forward`` returns at least ``logits (B, C)`` and
``attention (B, N_in)`` (softmax weights over its input instances, in input order).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

InputView = Literal["lr", "hr", "hier"]


#: Largest integer any config field may hold without weights to compare against (16.7M): a width
#: beyond this cannot be a MIL model that fits in memory.
MAX_CONFIG_INT = 2**24


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the source and the key."""


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _check_value(annotation: Any, value: Any) -> str | None:
    """None when ``value`` fits ``annotation`` (int, float, bool, str, ``X | None``, ``list[X]``,
    ``Literal``); otherwise what was expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        problems = [_check_value(a, value) for a in options if a is not type(None)]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        return None if value in allowed else f"one of {list(allowed)}"
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return f"a list of {_type_name(typing.get_args(annotation)[0])}"
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        bad = [_check_value(item, v) for v in value]
        return next((f"a list whose items are each {b}" for b in bad if b), None)
    if annotation is Any:
        return None
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return "an integer"
        if not 0 <= value <= MAX_CONFIG_INT:
            return f"an integer in [0, {MAX_CONFIG_INT}]"
        return None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "a number"
        return None if math.isfinite(value) else "a finite number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    return None  # other annotations are checked by the family itself


@dataclass
class ZooConfig:
    """Fields shared by every model config; families subclass it.

    Every field is checked on construction against its annotation (``int``: an integer in
    ``[0, MAX_CONFIG_INT]``, and >= 1 for the widths and counts in :attr:`positive`; ``float``: finite;
    ``bool``, ``str``, ``X | None``, ``list[X]``); families check their own ranges and choices when the
    model is built. :meth:`from_dict` also checks the keys and a size bound (see :mod:`zoo.hub`).
    """

    #: Integer fields that must be >= 1 when present (widths and counts of things that hold weights).
    positive: ClassVar[frozenset[str]] = frozenset(
        {"in_dim", "num_classes", "hidden", "attn_dim", "dim", "heads", "vlm_dim", "proj_hidden", "hr_dim",
         "n_layers", "d_state", "d_conv", "expand", "n_token", "n_token_1", "n_token_2"}
    )  # fmt: skip

    in_dim: int = 384

    def __post_init__(self) -> None:
        self.check(dataclasses.asdict(self), source=type(self).__name__)

    @classmethod
    def check(cls, values: Mapping[str, Any], *, source: str, size_bound: int | None = None) -> None:
        """Check ``values`` (field name -> value) against the field annotations.

        Args:
            source: what to name in the error (``"runs/abmil/config.json"``).
            size_bound: when given, no integer may exceed it (:mod:`zoo.hub` passes the number of
                elements stored in the weights file, read from its header before anything is built).

        Raises:
            ConfigError: ``"<source>: key 'hidden' must be an integer in [0, 16777216], got -4"``.
        """
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if name not in hints:
                continue
            expected = _check_value(hints[name], value)
            if expected is None and name in cls.positive and isinstance(value, int) and value < 1:
                expected = "an integer >= 1"
            if (
                expected is None
                and size_bound is not None
                and isinstance(value, int)
                and not isinstance(value, bool)
                and value > size_bound
            ):
                expected = (
                    f"at most {size_bound} (the number of weights stored in the file: a larger size "
                    "cannot be the model these weights belong to)"
                )
            if expected is not None:
                raise ConfigError(f"{source}: key {name!r} must be {expected}, got {value!r}")

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], *, source: str = "config", size_bound: int | None = None
    ) -> ZooConfig:
        """Build the config from a ``config.json`` dict (without ``architecture``), strictly.

        Raises:
            ConfigError: an unknown key (listing the valid ones), a value of the wrong type or out of
                range, or an integer above ``size_bound``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; valid keys: {sorted(names)}")
        cls.check(values, source=source, size_bound=size_bound)
        return cls(**values)


@dataclass
class MILConfig(ZooConfig):
    num_classes: int = 2


def check_batched(x: Tensor, name: str, expected: str = "(B, N, D)") -> None:
    """Raise a ValueError naming the model ``name`` unless ``x`` has the batched rank of ``expected``.

    Models take batched input only (torchmil's rule): a single bag ``(N, D)`` must be passed as
    ``x[None]`` (and its mask as ``mask[None]``).
    """
    rank = len(expected.strip("()").split(","))
    if x.dim() != rank:
        raise ValueError(
            f"{name} takes batched input {expected}, got {tuple(x.shape)}; "
            "pass a single bag as x[None] (and its mask as mask[None])"
        )


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
        """Write ``config.json`` + ``model.safetensors`` (+ card) into ``directory``; see
        :func:`zoo.model_folder.save_pretrained`."""
        from zoo import model_folder

        return model_folder.save_pretrained(self, directory, **kwargs)

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
