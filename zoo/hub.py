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
are honoured; a cached snapshot is used when the Hub is offline or unreachable). Every Hub call waits at
most ``$ZOO_HUB_TIMEOUT`` seconds (default 30) for each network operation, or the ``timeout=`` argument
of :func:`load`, :func:`pull`, :func:`push_folder` and :func:`push_to_hub`; a Hub that does not answer
gives a :class:`ZooLoadError` / :class:`ZooPushError` saying so and what to do.

Pushing never modifies the pushed folder: its own files (no links leading out of it, no hidden files)
are copied into a staging folder where the card is rendered. Weights are checked for dtype and
finiteness on every load, and so before every push.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from wsigym.io import atomic_write_files, atomic_write_text, dumps_json, temp_name
from zoo.models.base import ZooModel
from zoo.pretrained import PRETRAINED, PretrainedEntry, hub_org, list_pretrained

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "DEFAULT_HUB_TIMEOUT",
    "WEIGHTS_NAME",
    "ZooLoadError",
    "ZooPushError",
    "folder_files",
    "hub_timeout",
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
        tmp = directory.with_name(temp_name(directory.name))
        try:
            tmp.mkdir()  # the normal folder mode (mkdtemp would give 0700)
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
        problems.append(f"missing tensors [{_list(missing)}]")
    if strict and unexpected:
        problems.append(f"unexpected tensors [{_list(unexpected)}]")
    if mismatched:
        problems.append(f"shape mismatches [{_list(mismatched)}]")
    if wrong_dtype:
        problems.append(f"wrong dtypes [{_list(wrong_dtype)}]")
    if problems:
        raise ZooLoadError(
            f"{weights_path}: does not fit the {arch!r} model of {config_path}: " + "; ".join(problems)
        )
    tensors = _read_tensors(weights_path)
    bad = non_finite_tensors(tensors)
    if bad:
        raise ZooLoadError(
            f"{weights_path}: tensors with NaN or inf values [{_list(bad)}]; the weights are broken "
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


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_NAME).is_file()


#: Seconds each network operation of a Hub call (connect, each read and write) may wait; ``$ZOO_HUB_TIMEOUT``
#: or a ``timeout=`` argument override it.
DEFAULT_HUB_TIMEOUT = 30.0


def hub_timeout_seconds(timeout: float | None = None) -> float:
    """``timeout``, else ``$ZOO_HUB_TIMEOUT``, else :data:`DEFAULT_HUB_TIMEOUT` (seconds, > 0).

    Raises:
        ValueError: naming the argument or the variable when it is not a positive number.
    """
    source = "timeout"
    if timeout is None:
        text = os.environ.get("ZOO_HUB_TIMEOUT", "").strip()
        if not text:
            return DEFAULT_HUB_TIMEOUT
        source = "ZOO_HUB_TIMEOUT"
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(f"ZOO_HUB_TIMEOUT must be a number of seconds, got {text!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise ValueError(f"{source} must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


@contextmanager
def _httpx_timeout(session: Any, seconds: float) -> Iterator[None]:
    """huggingface_hub >= 1 (one ``httpx`` client shared by all threads): a request event hook that sets
    each request's timeout."""
    limits = {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}

    def set_timeout(request: Any) -> None:
        request.extensions["timeout"] = dict(limits)

    hooks = session.event_hooks
    session.event_hooks = {**hooks, "request": [*hooks.get("request", []), set_timeout]}
    try:
        yield
    finally:
        hooks = session.event_hooks
        session.event_hooks = {
            **hooks,
            "request": [h for h in hooks.get("request", []) if h is not set_timeout],
        }


@contextmanager
def _requests_timeout(session: Any, seconds: float) -> Iterator[None]:
    """huggingface_hub < 1 (a ``requests.Session`` per thread): every mounted transport adapter is
    wrapped by one that sends with ``timeout=seconds``; the adapters are put back on exit."""
    from requests.adapters import BaseAdapter

    class TimeoutAdapter(BaseAdapter):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def send(self, request: Any, stream: bool = False, timeout: Any = None, **kwargs: Any) -> Any:
            return self.inner.send(request, stream=stream, timeout=seconds, **kwargs)

        def close(self) -> None:
            self.inner.close()

    saved = dict(session.adapters)
    for prefix, adapter in saved.items():
        session.mount(prefix, TimeoutAdapter(adapter))
    try:
        yield
    finally:
        session.adapters.clear()
        for prefix, adapter in saved.items():
            session.mount(prefix, adapter)


@contextmanager
def hub_timeout(timeout: float | None = None) -> Iterator[float]:
    """Within the block, every request ``huggingface_hub`` sends from this thread waits at most
    ``timeout`` seconds for each network operation (see :func:`hub_timeout_seconds`), also the calls it
    makes without a timeout (``repo_info``, ``create_repo``, the commit), which otherwise wait forever.

    It uses the public API of the HTTP client behind ``huggingface_hub.get_session()``: with
    huggingface_hub >= 1 a request event hook on the shared ``httpx`` client (so other threads' requests
    get the timeout too while the block runs), before that a wrapper around the ``requests`` session's
    transport adapters; both are removed on exit. Yields the seconds.
    """
    from huggingface_hub import get_session

    seconds = hub_timeout_seconds(timeout)
    session = get_session()
    if hasattr(session, "event_hooks"):
        manager = _httpx_timeout(session, seconds)
    elif hasattr(session, "adapters"):
        manager = _requests_timeout(session, seconds)
    else:  # pragma: no cover - an HTTP client huggingface_hub does not use today
        raise RuntimeError(f"hub_timeout: unknown huggingface_hub session type {type(session).__name__}")
    with manager:
        yield seconds


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors of a Hub that cannot be reached or does not answer (not HTTP status errors)."""
    import importlib

    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    try:  # huggingface_hub < 1 talks through requests
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import Timeout as RequestsTimeout

        errors += [RequestsConnectionError, RequestsTimeout]
    except ImportError:
        pass
    return tuple(errors)


def _causes(e: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while e is not None and e not in chain and len(chain) < 20:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _network_problem(e: BaseException, seconds: float) -> str:
    """What went wrong, for a message: "did not answer within 30 s" / "is disabled ..." / "is not
    reachable (ConnectError: ...)"."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    chain = _causes(e)
    if any(isinstance(x, OfflineModeIsEnabled) for x in chain):
        return "is disabled (HF_HUB_OFFLINE=1 is set; unset it to use the network)"
    if any(type(x).__name__.endswith("Timeout") or isinstance(x, TimeoutError) for x in chain):
        return f"did not answer within {seconds:g} s (ZOO_HUB_TIMEOUT or timeout= to wait longer)"
    root = chain[-1]
    text = str(root).splitlines()[0] if str(root) else ""
    return f"is not reachable ({type(root).__name__}: {text})"


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


def _snapshot(
    repo_id: str,
    revision: str | None,
    *,
    entry: PretrainedEntry | None,
    asked: str,
    timeout: float | None = None,
) -> Path:
    """Download (or find in the cache) a snapshot of ``repo_id``, each network operation waiting at most
    ``timeout`` seconds (:func:`hub_timeout`); errors say why and what to do, and for a registered name
    give the command that trains and publishes it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    with hub_timeout(timeout) as seconds:
        try:
            return Path(snapshot_download(repo_id, revision=revision, library_name="wsigym-zoo"))
        except RevisionNotFoundError:
            raise ZooLoadError(
                f"{asked}: revision {revision!r} does not exist in {repo_id} on {constants.ENDPOINT}"
            ) from None
        except _hub_errors() as e:
            pin = f" (revision {revision})" if revision else ""
            if isinstance(e, RepositoryNotFoundError):
                where = f"the Hub repo {repo_id} does not exist on {constants.ENDPOINT}"
            elif constants.HF_HUB_OFFLINE:
                where = (
                    f"the Hub is disabled (HF_HUB_OFFLINE=1) and {repo_id}{pin} is not in the cache "
                    f"{constants.HF_HUB_CACHE}. Unset HF_HUB_OFFLINE to download it, or run "
                    f"`zoo pull {repo_id}` where the Hub is reachable and copy the cache"
                )
            else:
                where = (
                    f"the Hub repo {repo_id} is not reachable at {constants.ENDPOINT}: the Hub "
                    f"{_network_problem(e, seconds)}, and {repo_id}{pin} is not in the cache "
                    f"{constants.HF_HUB_CACHE}. Check the network and HF_ENDPOINT, or pull it once online "
                    f"(`zoo pull {repo_id}`) to use it offline"
                )
            message = f"{asked}: {where}."
            if entry is not None:
                how = "from your own CAMELYON16 features " if entry.dataset == "camelyon16" else ""
                message += f"\nTrain it {how}and publish it with:\n  {entry.command()}"
            raise ZooLoadError(message) from None


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
        return _snapshot(entry.repo_id(), revision, entry=entry, asked=asked, timeout=timeout), entry
    if _REPO_ID.match(asked):
        return _snapshot(asked, revision, entry=None, asked=asked, timeout=timeout), None
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


class ZooPushError(ValueError):
    """A folder could not be pushed: the message names the file or repo and what to do."""


def _render_card(folder: Path, repo_id: str) -> None:
    """Re-render the card of the (staged) zoo model folder ``folder`` so its loading snippet names
    ``repo_id``; the model is loaded strictly first (nothing broken is published)."""
    from zoo import cards

    model = load_folder(folder)
    inputs_path = folder / CARD_INPUTS_NAME
    if not (inputs_path.is_file() and (folder / CARD_NAME).is_file()):
        return
    try:
        inputs = json.loads(inputs_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooPushError(f"{inputs_path.name}: not valid JSON ({e})") from None
    if not isinstance(inputs, dict):
        raise ZooPushError(f"{inputs_path.name}: expected a JSON object (metrics, dataset_name, training)")
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
    atomic_write_text(folder / CARD_NAME, text)


def folder_files(folder: str | Path) -> list[str]:
    """The files ``push_folder`` uploads: relative paths (``/``-separated, sorted) of the regular files
    inside ``folder``, hidden names (temp files, ``.git``) left out.

    A symbolic link is followed only when its target lies inside ``folder`` (a linked folder's files are
    listed under the link's path, each real folder once).

    Raises:
        ZooPushError: a link whose target leaves the folder (or is broken), or something that is not a
            regular file (a FIFO or socket: reading it could block forever).
    """
    root = Path(folder).resolve()
    out: list[str] = []
    seen: set[Path] = set()

    def inside(path: Path) -> bool:
        return path == root or root in path.parents

    def walk(directory: Path, rel: Path) -> None:
        real = directory.resolve()
        if real in seen:
            return
        seen.add(real)
        for entry in sorted(directory.iterdir(), key=lambda p: p.name):
            if entry.name.startswith("."):
                continue
            shown = Path(folder) / rel / entry.name
            if entry.is_symlink():
                target = entry.resolve()
                if not target.exists():
                    raise ZooPushError(f"{shown}: broken link (to {os.readlink(entry)}); remove it")
                if not inside(target):
                    raise ZooPushError(
                        f"{shown}: a link to {target}, outside the folder {root}; push refuses to publish "
                        "files from elsewhere: copy the file into the folder or remove the link"
                    )
            if entry.is_dir():
                walk(entry, rel / entry.name)
            elif entry.is_file():
                out.append((rel / entry.name).as_posix())
            else:
                raise ZooPushError(f"{shown}: not a regular file (a FIFO, socket or device); remove it")

    walk(Path(folder), Path())
    return out


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool = False,
    timeout: float | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the commit sha.

    The folder is never modified: its files (see :func:`folder_files`: hidden files are left out,
    links leaving the folder are refused) are copied into a staging folder, and a zoo model folder's
    staged copy is loaded strictly (shapes, dtypes, finite values: nothing broken is published) and its
    card re-rendered there for ``repo_id``. Works for any artefact folder (an SB3 zip + card, too).

    Args:
        timeout: seconds to wait for each answer of the Hub (see :func:`hub_timeout`).

    Raises:
        ZooLoadError: the folder is a zoo model folder that does not load.
        ZooPushError: a link out of the folder, a special file, or the Hub unreachable / not answering.
        FileNotFoundError: ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"push_folder: {folder} is not a folder")
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"push_folder: repo id must look like 'org/name', got {repo_id!r}")
    files = folder_files(folder)
    if not files:
        raise ZooPushError(f"{folder}: no files to push (hidden files are left out)")
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        staging = Path(tmp) / folder.resolve().name
        for rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / rel, staging / rel)
        if _is_model_folder(staging):
            try:
                _render_card(staging, repo_id)
            except ZooLoadError as e:  # name the user's folder, not the staging copy
                raise ZooLoadError(str(e).replace(str(staging), str(folder))) from None
        with hub_timeout(timeout) as seconds:
            try:
                api = _api()
                api.create_repo(repo_id, private=private, exist_ok=True)
                info = api.upload_folder(
                    folder_path=str(staging),
                    repo_id=repo_id,
                    commit_message=commit_message or f"Upload {folder.name}",
                )
            except _network_errors() as e:
                from huggingface_hub import constants

                raise ZooPushError(
                    f"{repo_id}: the Hub at {constants.ENDPOINT} {_network_problem(e, seconds)}; nothing "
                    "was pushed. Check the network and HF_ENDPOINT, then push again"
                ) from None
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
        return _snapshot(entry.repo_id(), revision, entry=entry, asked=repo_id_or_name, timeout=timeout)
    if not _REPO_ID.match(repo_id_or_name):
        raise ZooLoadError(
            f"{repo_id_or_name!r} is neither a registered name nor a Hub repo id (org/name); "
            f"registered names: {_list(list_pretrained(), 30)}"
        )
    return _snapshot(repo_id_or_name, revision, entry=None, asked=repo_id_or_name, timeout=timeout)


def cached_revision(repo_id: str) -> str | None:
    """The commit sha of ``main`` in the local Hub cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, CONFIG_NAME)
    if isinstance(found, str):
        return Path(found).parent.name
    return None
