"""Architecture registry: family name -> model class, and ``create_model`` (timm style).

Families are listed as ``"module:Class"`` strings and imported on first use, so importing
:mod:`zoo` stays cheap and optional dependencies (open_clip, mamba-ssm) load only when needed.
Pretrained names (``"semamil-camelyon16"``) and Hub repos are resolved by :mod:`zoo.hub`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the families are imported by name (ARCHITECTURES), on first use
    from zoo.models.base import ZooConfig, ZooModel

ARCHITECTURES: dict[str, str] = {
    "abmil": "zoo.models.abmil:ABMIL",
    "acmil": "zoo.models.acmil:ACMIL",
    "transmil": "zoo.models.transmil:TransMIL",
    "hafed": "zoo.models.hafed:HAFED",
    "tsu": "zoo.models.tsu:TSU",
    "asmil": "zoo.models.asmil:ASMIL",
    "semamil": "zoo.models.semamil:SemaMIL",
    "lrmil": "zoo.models.lrmil:LRMIL",
    "wisefuse": "zoo.models.wisefuse:WiseFuse",
}


def list_architectures() -> list[str]:
    """Registered family names."""
    return sorted(ARCHITECTURES)


def model_class(architecture: str) -> type[ZooModel]:
    """Import and return the class of a family.

    Raises:
        KeyError: for an unknown family, listing the known ones.
    """
    if architecture not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {architecture!r}; known: {list_architectures()}")
    module_name, class_name = ARCHITECTURES[architecture].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_config(architecture: str, **overrides: Any) -> ZooConfig:
    """The family's config dataclass with defaults, updated by ``overrides``.

    Raises:
        TypeError: for a key the config does not have (names the key and the valid ones).
    """
    cls = model_class(architecture).config_class
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"{architecture}: unknown config keys {unknown}; valid keys: {sorted(names)}")
    return cls(**overrides)


def create_model(architecture: str, **overrides: Any) -> ZooModel:
    """Build a randomly initialised model of ``architecture`` with config ``overrides``.

    Example: ``create_model("abmil", in_dim=1024, num_classes=3)``. For trained weights use
    :func:`zoo.load`.
    """
    return model_class(architecture)(build_config(architecture, **overrides))


def config_from_dict(
    config: dict[str, Any], source: str = "config.json", *, size_bound: int | None = None
) -> tuple[type[ZooModel], ZooConfig]:
    """The model class and its validated config from a ``config.json`` dict, building nothing.

    Args:
        size_bound: no integer of the config may exceed it (see :meth:`ZooConfig.check`).

    Raises:
        ValueError: naming ``source`` when the architecture is missing or unknown, a key is unknown, or a
            value has the wrong type or is out of range.
    """
    config = dict(config)
    arch = config.pop("architecture", None)
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ValueError(f"{source}: 'architecture' must be one of {list_architectures()}, got {arch!r}")
    cls = model_class(arch)
    return cls, cls.config_class.from_dict(config, source=source, size_bound=size_bound)


def model_from_config_dict(config: dict[str, Any], source: str = "config.json") -> ZooModel:
    """Rebuild a model from a ``config.json`` dict (with its ``architecture`` key).

    Raises:
        ValueError: naming ``source`` when the architecture is missing or unknown, or keys do not fit.
    """
    cls, cfg = config_from_dict(config, source)
    try:
        return cls(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None
