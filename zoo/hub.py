"""Save, load, push and pull zoo models: local folders, the Hugging Face Hub and its cache.

A model folder (and a Hub repo) holds::

    config.json          {"architecture": <family>, <config fields>}   -> zoo.registry.model_from_config_dict
    model.safetensors    every state_dict tensor (aliases of shared tensors in the header metadata)
    README.md            card rendered from hub_cards/<family>.md (zoo.cards)
    metrics.json         measured metrics, when given
    card.json            the card inputs (metrics, dataset, training), to re-render it on push
    <extra files>        data the model needs (e.g. class descriptions)

Loading is strict and pickle-free: ``config.json`` must describe a known architecture (the one the
registered name promises), and the weights must have exactly the model's tensors with the right shapes;
anything else (and a truncated or corrupt file) raises one :class:`ZooLoadError` naming the file.

Names resolve in this order: an existing local folder; a registered name (:mod:`zoo.pretrained`):
weights shipped in the package, else the Hub repo ``{$ZOO_HUB_ORG or "wsigym"}/{name}``; otherwise a
Hub repo id. Downloads go through ``huggingface_hub`` (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``
are honoured; a cached snapshot is used when the Hub is offline or unreachable).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zoo.models.base import ZooModel
from zoo.pretrained import PRETRAINED, PretrainedEntry, hub_org, list_pretrained

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "ZooLoadError",
    "list_pretrained",
    "load",
    "load_folder",
    "pull",
    "push_folder",
    "push_to_hub",
    "resolve",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
METRICS_NAME = "metrics.json"
CARD_INPUTS_NAME = "card.json"
_OWN_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME, CARD_INPUTS_NAME)
_ALIASES_KEY = "zoo.aliases"
_ARCH_KEY = "zoo.architecture"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ZooLoadError(ValueError):
    """A model could not be loaded: the message names the file or repo and what was expected."""


# ------------------------------------------------------------------------------------------------- save
def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _dump_json(data: Any) -> bytes:
    return (json.dumps(_json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def state_dict_for_saving(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, aliases)``: one contiguous CPU copy per distinct tensor, and ``{alias: kept name}`` for
    state_dict entries that are the same tensor (tied weights), which safetensors cannot store twice."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        key = (
            t.device,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        if t.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous().clone()
    return tensors, aliases


def _model_files(
    model: ZooModel,
    *,
    load_id: str,
    metrics: Mapping[str, Any] | None,
    dataset_name: str | None,
    training: Mapping[str, Any] | None,
) -> dict[str, bytes]:
    from safetensors.torch import save as save_bytes

    from zoo import cards

    if not isinstance(model, ZooModel):
        raise TypeError(f"save_pretrained needs a zoo.models.base.ZooModel, got {type(model).__name__}")
    config = model.config_dict()
    tensors, aliases = state_dict_for_saving(model)
    metadata = {"format": "pt", _ARCH_KEY: model.family, _ALIASES_KEY: json.dumps(aliases, sort_keys=True)}
    name = load_id.rstrip("/").split("/")[-1]
    entry = PRETRAINED.get(name)
    files = {
        CONFIG_NAME: _dump_json(config),
        WEIGHTS_NAME: save_bytes(tensors, metadata=metadata),
        CARD_NAME: cards.render_card(
            model.family,
            model_name=name,
            load_id=load_id,
            config=config,
            num_parameters=model.num_parameters(),
            metrics=metrics,
            dataset_name=dataset_name,
            training=training,
            train_command=entry.command() if entry and entry.architecture == model.family else None,
        ).encode(),
        CARD_INPUTS_NAME: _dump_json(
            {"metrics": metrics, "dataset_name": dataset_name, "training": training}
        ),
    }
    if metrics:
        files[METRICS_NAME] = _dump_json(metrics)
    return files


def _check_extra_files(extra_files: Mapping[str, bytes] | None) -> dict[str, bytes]:
    out = {}
    for name, data in (extra_files or {}).items():
        parts = Path(name).parts
        if Path(name).is_absolute() or not parts or ".." in parts or name in _OWN_FILES:
            raise ValueError(
                f"extra_files: {name!r} must be a relative path inside the folder, not one of {_OWN_FILES}"
            )
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"extra_files[{name!r}] must be bytes, got {type(data).__name__}")
        out[name] = bytes(data)
    return out


def _write_folder(directory: Path, files: Mapping[str, bytes], stale: tuple[str, ...] = ()) -> None:
    """Write ``files`` into ``directory`` without leaving anything half-written.

    A new (or empty) folder is built as a temp folder next to it and renamed into place; an existing one
    (a training run folder with logs) gets every file written to a temp file in the same folder and
    ``os.replace``-d. ``stale`` names of ours that are not in ``files`` are removed.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        try:
            for name, data in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            if directory.exists():
                directory.rmdir()
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    if not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a folder")
    temps: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            temps.append((Path(tmp_name), target))
        for tmp_path, target in temps:  # weights first is irrelevant: all content is already on disk
            os.replace(tmp_path, target)
    except BaseException:
        for tmp_path, _ in temps:
            tmp_path.unlink(missing_ok=True)
        raise
    for name in stale:
        if name not in files:
            (directory / name).unlink(missing_ok=True)


def save_pretrained(
    model: ZooModel,
    directory: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    dataset_name: str | None = None,
    training: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``README.md`` (+ ``metrics.json``, extra files).

    Args:
        model: the model; its ``config_dict()`` becomes ``config.json``.
        directory: target folder (created; an existing folder keeps its other files).
        metrics: measured metrics for the card and ``metrics.json`` (see :mod:`zoo.cards`); None -> the
            card says "not evaluated".
        dataset_name: dataset the metrics were measured on.
        training: training facts for the card (``recipe``, ``fold``, ``seed``, ...).
        extra_files: ``{relative path: bytes}`` the model needs (e.g. class descriptions).
        repo_id: the repo id the card's loading snippet uses; default ``{org}/{folder name}``.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.
    """
    directory = Path(directory)
    files = _model_files(
        model,
        load_id=repo_id or f"{hub_org()}/{directory.resolve().name}",
        metrics=metrics,
        dataset_name=dataset_name,
        training=training,
    )
    files.update(_check_extra_files(extra_files))
    _write_folder(directory, files, stale=(METRICS_NAME,))
    return directory


# ------------------------------------------------------------------------------------------------- load
def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ZooLoadError(f"{path}: missing; a zoo model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooLoadError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ZooLoadError(f"{path}: expected a JSON object with an 'architecture' key")
    return config


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ZooLoadError(f"{path}: missing; a zoo model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(path), device="cpu")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        size = path.stat().st_size
        raise ZooLoadError(
            f"{path}: not a valid safetensors file ({size} bytes; {e}). The file is truncated or corrupt: "
            "delete it (or its Hub cache entry) and save or download it again."
        ) from None
    try:
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except json.JSONDecodeError:
        raise ZooLoadError(f"{path}: header metadata {_ALIASES_KEY!r} is not valid JSON") from None
    return tensors, {"architecture": metadata.get(_ARCH_KEY), **{"aliases": aliases}}


def _list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_folder(
    folder: str | Path,
    *,
    expected_architecture: str | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    source: str | None = None,
) -> ZooModel:
    """Load a model folder (``config.json`` + ``model.safetensors``) strictly, without pickle.

    Args:
        expected_architecture: the family the caller was promised (a registered name's); a config of
            another family is an error.
        strict: refuse missing or unexpected tensors (shape mismatches are always refused).
        source: how the caller named the model, for error messages.

    Returns:
        The model in eval mode on ``device``.

    Raises:
        ZooLoadError: naming the file and what is wrong.
    """
    folder = Path(folder)
    config = _read_config(folder)
    config_path = folder / CONFIG_NAME
    arch = config.get("architecture")
    if expected_architecture is not None and arch != expected_architecture:
        raise ZooLoadError(
            f"{config_path}: describes architecture {arch!r}, but {source or folder} is a {expected_architecture!r} model"
        )
    try:
        model = _model_from_config(config, str(config_path))
    except ValueError as e:
        raise ZooLoadError(str(e)) from None
    weights_path = folder / WEIGHTS_NAME
    tensors, meta = _read_weights(weights_path)
    if meta["architecture"] not in (None, arch):
        raise ZooLoadError(
            f"{weights_path}: weights of a {meta['architecture']!r} model, but {config_path} describes {arch!r}"
        )
    for alias, kept in meta["aliases"].items():
        if kept not in tensors:
            raise ZooLoadError(f"{weights_path}: alias {alias!r} points at missing tensor {kept!r}")
        tensors[alias] = tensors[kept]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(tensors))
        if tensors[k].shape != expected[k].shape
    ]
    problems = []
    if strict and missing:
        problems.append(f"missing tensors [{_list(missing)}]")
    if strict and unexpected:
        problems.append(f"unexpected tensors [{_list(unexpected)}]")
    if mismatched:
        problems.append(f"shape mismatches [{_list(mismatched)}]")
    if problems:
        raise ZooLoadError(
            f"{weights_path}: does not fit the {arch!r} model of {config_path}: " + "; ".join(problems)
        )
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=strict)
    return model.to(device).eval()


def _model_from_config(config: dict[str, Any], source: str) -> ZooModel:
    from zoo.registry import model_from_config_dict

    try:
        return model_from_config_dict(config, source=source)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from None


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Errors of an unreachable/offline Hub: huggingface_hub's own, and its HTTP client's (httpx2 in
    huggingface_hub 2.x, httpx before)."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    errors: list[type[BaseException]] = [
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        OSError,
    ]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except ImportError:
            continue
    return tuple(errors)


def _snapshot(repo_id: str, revision: str | None, *, entry: PretrainedEntry | None, asked: str) -> Path:
    """Download (or find in the cache) a snapshot of ``repo_id``; errors say why and, for a registered
    name, give the command that trains and publishes it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, library_name="wsigym-zoo"))
    except RevisionNotFoundError:
        raise ZooLoadError(
            f"{asked}: revision {revision!r} does not exist in {repo_id} on {constants.ENDPOINT}"
        ) from None
    except _hub_errors() as e:
        offline = constants.HF_HUB_OFFLINE
        if isinstance(e, RepositoryNotFoundError):
            where = f"the Hub repo {repo_id} does not exist on {constants.ENDPOINT}"
        elif offline:
            where = f"the Hub is disabled (HF_HUB_OFFLINE=1) and {repo_id}"
            where += f" (revision {revision})" if revision else ""
            where += f" is not in the cache {constants.HF_HUB_CACHE}"
        else:
            where = (
                f"the Hub repo {repo_id} is not reachable at {constants.ENDPOINT} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}) "
                f"and is not in the cache {constants.HF_HUB_CACHE}"
            )
        message = f"{asked}: {where}."
        if entry is not None:
            how = "from your own CAMELYON16 features " if entry.dataset == "camelyon16" else ""
            message += f"\nTrain it {how}and publish it with:\n  {entry.command()}"
        raise ZooLoadError(message) from None


def resolve(
    name_or_repo_or_path: str | Path, revision: str | None = None
) -> tuple[Path, PretrainedEntry | None]:
    """The local folder holding ``name_or_repo_or_path`` (downloading it if needed) and its registry entry.

    Raises:
        ZooLoadError: not a folder, registered name or repo id; or not reachable and not cached.
    """
    asked = str(name_or_repo_or_path)
    path = Path(asked).expanduser()
    if path.is_dir():
        return path, None
    entry = PRETRAINED.get(asked)
    if entry is not None:
        if revision is None and entry.is_shipped():
            return entry.shipped_dir, entry
        return _snapshot(entry.repo_id(), revision, entry=entry, asked=asked), entry
    if _REPO_ID.match(asked):
        return _snapshot(asked, revision, entry=None, asked=asked), None
    raise ZooLoadError(
        f"{asked!r} is not a model folder, a registered name or a Hub repo id (org/name); "
        f"registered names: {_list(list_pretrained(), 30)}"
    )


def load(
    name_or_repo_or_path: str | Path,
    revision: str | None = None,
    *,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> ZooModel:
    """Load a trained model from a local folder, a registered name or a Hub repo id.

    Args:
        name_or_repo_or_path: ``"runs/abmil"`` (folder), ``"semamil-camelyon16"`` (registered name; see
            :func:`zoo.list`), or ``"org/repo"``.
        revision: Hub branch or commit sha (pins the weights; ignored for folders).
        device: where to put the model.
        strict: refuse missing/unexpected tensors.

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
            f"wsigym.agents.ppo.load_policy({asked!r}) (safetensors + policy.json, no unpickling)"
        )
    folder, entry = resolve(asked, revision)
    if not _is_model_folder(folder) and not (folder / WEIGHTS_NAME).exists():
        raise ZooLoadError(f"{asked}: {folder} has neither {CONFIG_NAME} nor {WEIGHTS_NAME}; not a zoo model")
    return load_folder(
        folder,
        expected_architecture=entry.architecture if entry else None,
        device=device,
        strict=strict,
        source=asked,
    )


# ------------------------------------------------------------------------------------------------- hub
def _api():
    from huggingface_hub import HfApi

    return HfApi(library_name="wsigym-zoo")


def _refresh_card(folder: Path, repo_id: str) -> None:
    """Re-render a zoo model folder's card so its loading snippet names ``repo_id``."""
    from zoo import cards

    inputs_path = folder / CARD_INPUTS_NAME
    if not (_is_model_folder(folder) and inputs_path.is_file() and (folder / CARD_NAME).is_file()):
        return
    inputs = json.loads(inputs_path.read_text())
    model = load_folder(folder)
    name = repo_id.split("/")[-1]
    entry = PRETRAINED.get(name)
    text = cards.render_card(
        model.family,
        model_name=name,
        load_id=repo_id,
        config=model.config_dict(),
        num_parameters=model.num_parameters(),
        metrics=inputs.get("metrics"),
        dataset_name=inputs.get("dataset_name"),
        training=inputs.get("training"),
        train_command=entry.command(repo_id.split("/")[0])
        if entry and entry.architecture == model.family
        else None,
    )
    if text != (folder / CARD_NAME).read_text():
        _write_folder(folder, {CARD_NAME: text.encode()})


def push_folder(
    folder: str | Path, repo_id: str, *, commit_message: str | None = None, private: bool = False
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the commit sha.

    A zoo model folder is first loaded strictly (nothing broken is published) and its card re-rendered
    for ``repo_id``. Hidden files (temp files) are not uploaded. Works for any artefact folder (an SB3
    zip + card, too).

    Raises:
        ZooLoadError: the folder is a zoo model folder that does not load.
        FileNotFoundError: ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"push_folder: {folder} is not a folder")
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"push_folder: repo id must look like 'org/name', got {repo_id!r}")
    if _is_model_folder(folder):
        load_folder(folder)
        _refresh_card(folder, repo_id)
    api = _api()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        commit_message=commit_message or f"Upload {folder.name}",
        ignore_patterns=[".*", "*/.*"],
    )
    return info.oid


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
) -> str:
    """Save ``model`` (see :func:`save_pretrained`) into a temp folder and push it; returns the commit sha."""
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
            folder, repo_id, commit_message=commit_message or f"Upload {model.family}", private=private
        )


def pull(repo_id_or_name: str, revision: str | None = None) -> Path:
    """Download a whole repo (registered name or repo id) into the Hub cache; returns the snapshot folder.

    Raises:
        ZooLoadError: unknown name, or not reachable and not cached (with the training command for names).
    """
    entry = PRETRAINED.get(repo_id_or_name)
    if entry is not None:
        if revision is None and entry.is_shipped():
            return entry.shipped_dir
        return _snapshot(entry.repo_id(), revision, entry=entry, asked=repo_id_or_name)
    if not _REPO_ID.match(repo_id_or_name):
        raise ZooLoadError(
            f"{repo_id_or_name!r} is neither a registered name nor a Hub repo id (org/name); "
            f"registered names: {_list(list_pretrained(), 30)}"
        )
    return _snapshot(repo_id_or_name, revision, entry=None, asked=repo_id_or_name)


def cached_revision(repo_id: str) -> str | None:
    """The commit sha of ``main`` in the local Hub cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, CONFIG_NAME)
    if isinstance(found, str):
        return Path(found).parent.name
    return None
