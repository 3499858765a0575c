"""zoo: MIL models for whole-slide images with weights on the Hugging Face Hub.

>>> import zoo
>>> zoo.list()                          # pretrained names
>>> model = zoo.load("hafed-synth-c16")  # name, Hub repo id, or local folder
>>> model = zoo.create_model("semamil", in_dim=1024, num_classes=3)
"""

from __future__ import annotations

from typing import Any

from zoo.registry import create_model, list_architectures

__all__ = ["create_model", "list", "list_architectures", "load"]


def load(name_or_repo_or_path: str, revision: str | None = None, **kwargs: Any):
    """Load a trained model: a registered name, a Hub repo id, or a local folder. See :func:`zoo.hub.load`."""
    from zoo import hub

    return hub.load(name_or_repo_or_path, revision=revision, **kwargs)


def list() -> list[str]:
    """Registered pretrained model names. See :func:`zoo.hub.list_pretrained`."""
    from zoo import hub

    return hub.list_pretrained()
