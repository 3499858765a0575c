"""The zoo model folder (and Hub repo) format: :func:`save_pretrained` writes it, :func:`load_folder` reads it.

A model folder holds::

    config.json          {"architecture": <family>, <config fields>}   -> zoo.registry.model_from_config_dict
    model.safetensors    every state_dict tensor (aliases of shared tensors in the header metadata)
    README.md            card rendered from hub_cards/<family>.md (zoo.cards)
    metrics.json         measured metrics, when given
    card.json            the card inputs (metrics, dataset, training), to re-render it on push
    <extra files>        data the model needs (e.g. class descriptions)

Loading is strict and pickle-free: ``config.json`` must describe a known architecture (the one the
registered name promises), and the weights must have exactly the model's tensors with the right shapes;
anything else (and a truncated or corrupt file) raises one :class:`ZooLoadError` naming the file.
Weights are checked for dtype and finiteness on every load. Files are written atomically
(:mod:`wsigym.io`). Names and the Hub are :mod:`zoo.hub`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wsigym.io import atomic_folder, atomic_write_files, dumps_json
from zoo.pretrained import PRETRAINED, hub_org

if TYPE_CHECKING:  # annotations only: zoo.models.base imports this module to save itself
    from zoo.models.base import ZooModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
METRICS_NAME = "metrics.json"
CARD_INPUTS_NAME = "card.json"
_OWN_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME, CARD_INPUTS_NAME)
_ALIASES_KEY = "zoo.aliases"
_ARCH_KEY = "zoo.architecture"


class ZooLoadError(ValueError):
    """A model could not be loaded: the message names the file or repo and what was expected."""


# ------------------------------------------------------------------------------------------------- save
def _dump_json(data: Any) -> bytes:
    return dumps_json(data, sort_keys=True).encode()


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

    if not (
        isinstance(getattr(model, "family", None), str) and callable(getattr(model, "config_dict", None))
    ):
        # duck-typed: this module must not import zoo.models.base, whose save_pretrained calls it
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
        with atomic_folder(directory) as tmp:
            for name, data in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
        return
    if not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a folder")
    atomic_write_files({directory / name: data for name, data in files.items()})
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


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_INT_DTYPES = ("I64", "I32", "I16", "I8", "U8")


def _corrupt(path: Path, e: BaseException) -> ZooLoadError:
    size = path.stat().st_size if path.exists() else 0
    return ZooLoadError(
        f"{path}: not a valid safetensors file ({size} bytes; {e}). The file is truncated or corrupt: "
        "delete it (or its Hub cache entry) and save or download it again."
    )


def _read_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, Any]]:
    """``({tensor name: (dtype, shape)}, {"architecture", "aliases"})`` from the safetensors header
    alone (no tensor data is read, nothing is allocated)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ZooLoadError(f"{path}: missing; a zoo model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            header = {}
            for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                sl = f.get_slice(name)
                header[name] = (str(sl.get_dtype()), tuple(int(n) for n in sl.get_shape()))
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from None
    try:
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except json.JSONDecodeError:
        raise ZooLoadError(f"{path}: header metadata {_ALIASES_KEY!r} is not valid JSON") from None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ZooLoadError(f"{path}: header metadata {_ALIASES_KEY!r} must map tensor names to tensor names")
    return header, {"architecture": metadata.get(_ARCH_KEY), "aliases": aliases}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from None


def _dtype_problem(file_dtype: str, expected: torch.dtype) -> str | None:
    """Why a stored dtype cannot fill a model tensor of dtype ``expected`` (None when it can).

    Floating tensors take any floating dtype (cast on load); integer and bool tensors need their kind."""
    if expected.is_floating_point:
        ok = file_dtype in _FLOAT_DTYPES
    elif expected == torch.bool:
        ok = file_dtype == "BOOL"
    else:
        ok = file_dtype in _INT_DTYPES
    return None if ok else f"{file_dtype} where the model holds {str(expected).removeprefix('torch.')}"


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf."""
    return sorted(
        name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    )


def listing(names: list[str], limit: int = 12) -> str:
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

    Nothing is allocated before the files are checked: ``config.json`` is validated against the
    family's config dataclass (types, ranges, and no integer above the number of elements stored in
    ``model.safetensors``, read from its header), the model is built on the ``meta`` device and its
    tensor names, shapes and dtypes are compared with the header; only then are the tensors read (every
    floating tensor must be finite) and the real model built.

    Args:
        expected_architecture: the family the caller was promised (a registered name's); a config of
            another family is an error.
        strict: refuse missing or unexpected tensors (shape, dtype and NaN/inf problems are always refused).
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
    from zoo.registry import ARCHITECTURES, list_architectures

    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ZooLoadError(
            f"{config_path}: 'architecture' must be one of {list_architectures()}, got {arch!r}"
        )
    weights_path = folder / WEIGHTS_NAME
    header, meta = _read_header(weights_path)
    if meta["architecture"] not in (None, arch):
        raise ZooLoadError(
            f"{weights_path}: weights of a {meta['architecture']!r} model, but {config_path} describes {arch!r}"
        )
    stored = sum(math.prod(shape) for _, shape in header.values())
    model_cls, model_config = _config_from_dict(config, str(config_path), size_bound=max(1, stored))
    try:
        with torch.device("meta"):  # names, shapes and dtypes without allocating anything
            expected = {k: (t.shape, t.dtype) for k, t in model_cls(model_config).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise ZooLoadError(f"{config_path}: {e}") from None
    for alias, kept in meta["aliases"].items():
        if kept not in header:
            raise ZooLoadError(f"{weights_path}: alias {alias!r} points at missing tensor {kept!r}")
        header[alias] = header[kept]
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    common = sorted(set(expected) & set(header))
    mismatched = [
        f"{k}: file {header[k][1]} vs model {tuple(expected[k][0])}"
        for k in common
        if header[k][1] != tuple(expected[k][0])
    ]
    wrong_dtype = [
        f"{k}: {problem}" for k in common if (problem := _dtype_problem(header[k][0], expected[k][1]))
    ]
    problems = []
    if strict and missing:
        problems.append(f"missing tensors [{listing(missing)}]")
    if strict and unexpected:
        problems.append(f"unexpected tensors [{listing(unexpected)}]")
    if mismatched:
        problems.append(f"shape mismatches [{listing(mismatched)}]")
    if wrong_dtype:
        problems.append(f"wrong dtypes [{listing(wrong_dtype)}]")
    if problems:
        raise ZooLoadError(
            f"{weights_path}: does not fit the {arch!r} model of {config_path}: " + "; ".join(problems)
        )
    tensors = _read_tensors(weights_path)
    bad = non_finite_tensors(tensors)
    if bad:
        raise ZooLoadError(
            f"{weights_path}: tensors with NaN or inf values [{listing(bad)}]; the weights are broken "
            "(a diverged training run?) and are not loaded"
        )
    for alias, kept in meta["aliases"].items():
        tensors[alias] = tensors[kept]
    model = model_cls(model_config)
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=strict)
    return model.to(device).eval()


def _config_from_dict(
    config: dict[str, Any], source: str, size_bound: int | None = None
) -> tuple[type[ZooModel], Any]:
    from zoo.registry import config_from_dict

    try:
        return config_from_dict(config, source=source, size_bound=size_bound)
    except (KeyError, TypeError, ValueError) as e:
        message = str(e)
        raise ZooLoadError(message if message.startswith(source) else f"{source}: {message}") from None


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_NAME).is_file()
