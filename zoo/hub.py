"""Save, load, push and pull zoo models by name: the entry points, and how a name becomes a folder.

Names resolve in this order: an existing local folder; a registered name (:mod:`zoo.pretrained`):
weights shipped in the package, else the Hub repo ``{$ZOO_HUB_ORG or "wsigym"}/{name}``; otherwise a
Hub repo id. The folder format is :mod:`zoo.model_folder` (:func:`save_pretrained`, :func:`load_folder`,
:class:`ZooLoadError`); the Hub transport (timeouts, cache, :func:`push_folder`) is
:mod:`zoo.hub_transport`. Both are re-exported here, the one module users import.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zoo.hub_transport import (
    DEFAULT_HUB_TIMEOUT,
    REPO_ID,
    ZooPushError,
    cached_revision,
    folder_files,
    hub_timeout,
    hub_timeout_seconds,
    push_folder,
    snapshot,
)
from zoo.model_folder import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    ZooLoadError,
    is_model_folder,
    listing,
    load_folder,
    save_pretrained,
)
from zoo.pretrained import PRETRAINED, PretrainedEntry, list_pretrained

if TYPE_CHECKING:  # annotations only: zoo.models.base imports this module to push itself
    from zoo.models.base import ZooModel

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "DEFAULT_HUB_TIMEOUT",
    "WEIGHTS_NAME",
    "ZooLoadError",
    "ZooPushError",
    "cached_revision",
    "folder_files",
    "hub_timeout",
    "hub_timeout_seconds",
    "list_pretrained",
    "load",
    "load_folder",
    "pull",
    "push_folder",
    "push_to_hub",
    "resolve",
    "save_pretrained",
]


def resolve(
    name_or_repo_or_path: str | Path, revision: str | None = None, *, timeout: float | None = None
) -> tuple[Path, PretrainedEntry | None]:
    """The local folder holding ``name_or_repo_or_path`` (downloading it if needed) and its registry entry.

    Args:
        timeout: seconds each Hub operation may wait (default ``$ZOO_HUB_TIMEOUT`` or 30; see
            :func:`hub_timeout`).

    Raises:
        ZooLoadError: empty, or not a folder, registered name or repo id; or not reachable and not cached.
    """
    asked = str(name_or_repo_or_path)
    if not asked.strip():
        raise ZooLoadError(
            f"{asked!r}: empty model name; give a model folder, a registered name (zoo list) or a Hub "
            "repo id (org/name)"
        )
    path = Path(asked).expanduser()
    if path.is_dir():
        return path, None
    entry = PRETRAINED.get(asked)
    if entry is not None:
        if revision is None and entry.is_shipped():
            return entry.shipped_dir, entry
        return snapshot(entry.repo_id(), revision, entry=entry, asked=asked, timeout=timeout), entry
    if REPO_ID.match(asked):
        return snapshot(asked, revision, entry=None, asked=asked, timeout=timeout), None
    raise ZooLoadError(
        f"{asked!r} is not a model folder, a registered name or a Hub repo id (org/name); "
        f"registered names: {listing(list_pretrained(), 30)}"
    )


def load(
    name_or_repo_or_path: str | Path,
    revision: str | None = None,
    *,
    device: str | torch.device = "cpu",
    strict: bool = True,
    timeout: float | None = None,
) -> ZooModel:
    """Load a trained model from a local folder, a registered name or a Hub repo id.

    Args:
        name_or_repo_or_path: ``"runs/abmil"`` (folder), ``"semamil-camelyon16"`` (registered name; see
            :func:`zoo.list`), or ``"org/repo"``.
        revision: Hub branch or commit sha (pins the weights; ignored for folders).
        device: where to put the model.
        strict: refuse missing/unexpected tensors.
        timeout: seconds each Hub operation may wait before the call fails (default
            ``$ZOO_HUB_TIMEOUT`` or :data:`DEFAULT_HUB_TIMEOUT`, 30 s).

    Returns:
        The model in eval mode.

    Raises:
        ZooLoadError: with the file/repo and the reason (and, for registered names that are neither
            reachable nor cached, the command that trains and publishes them).
    """
    asked = str(name_or_repo_or_path)
    entry = PRETRAINED.get(asked)
    if entry is not None and entry.kind != "mil":
        raise ZooLoadError(
            f"{asked} is a {entry.architecture} policy, not a MIL model: load it with "
            f"wsigym.agents.saved_policy.load_policy({asked!r}) (safetensors + policy.json, no unpickling)"
        )
    folder, entry = resolve(asked, revision, timeout=timeout)
    if not is_model_folder(folder) and not (folder / WEIGHTS_NAME).exists():
        raise ZooLoadError(f"{asked}: {folder} has neither {CONFIG_NAME} nor {WEIGHTS_NAME}; not a zoo model")
    return load_folder(
        folder,
        expected_architecture=entry.architecture if entry else None,
        device=device,
        strict=strict,
        source=asked,
    )


def push_to_hub(
    model: ZooModel,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool = False,
    metrics: Mapping[str, Any] | None = None,
    dataset_name: str | None = None,
    training: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    timeout: float | None = None,
) -> str:
    """Save ``model`` (see :func:`save_pretrained`) into a temp folder and push it (see
    :func:`push_folder`); returns the commit sha."""
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        folder = save_pretrained(
            model,
            Path(tmp) / repo_id.split("/")[-1],
            metrics=metrics,
            dataset_name=dataset_name,
            training=training,
            extra_files=extra_files,
            repo_id=repo_id,
        )
        return push_folder(
            folder,
            repo_id,
            commit_message=commit_message or f"Upload {model.family}",
            private=private,
            timeout=timeout,
        )


def pull(repo_id_or_name: str, revision: str | None = None, *, timeout: float | None = None) -> Path:
    """Download a whole repo (registered name or repo id) into the Hub cache; returns the snapshot folder.

    ``timeout``: seconds each Hub operation may wait (see :func:`hub_timeout`).

    Raises:
        ZooLoadError: unknown name, or not reachable and not cached (with the training command for names).
    """
    entry = PRETRAINED.get(repo_id_or_name)
    if entry is not None:
        if revision is None and entry.is_shipped():
            return entry.shipped_dir
        return snapshot(entry.repo_id(), revision, entry=entry, asked=repo_id_or_name, timeout=timeout)
    if not REPO_ID.match(repo_id_or_name):
        raise ZooLoadError(
            f"{repo_id_or_name!r} is neither a registered name nor a Hub repo id (org/name); "
            f"registered names: {listing(list_pretrained(), 30)}"
        )
    return snapshot(repo_id_or_name, revision, entry=None, asked=repo_id_or_name, timeout=timeout)
