"""The Hugging Face Hub transport of zoo: timeouts, downloads into the cache, uploads.

Downloads go through ``huggingface_hub`` (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE`` are honoured; a
cached snapshot is used when the Hub is offline or unreachable). Every Hub call waits at most
``$ZOO_HUB_TIMEOUT`` seconds (default 30) for each network operation, or the ``timeout=`` argument of
:func:`snapshot` and :func:`push_folder`; a Hub that does not answer gives a
:class:`~zoo.model_folder.ZooLoadError` / :class:`ZooPushError` saying so and what to do.

Pushing never modifies the pushed folder: its own files (no links leading out of it, no hidden files)
are copied into a staging folder where a model folder's card is rendered, after a strict load (nothing
broken is published).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wsigym.io import atomic_write_text
from zoo.model_folder import (
    CARD_INPUTS_NAME,
    CARD_NAME,
    CONFIG_NAME,
    ZooLoadError,
    is_model_folder,
    load_folder,
)
from zoo.pretrained import PRETRAINED, PretrainedEntry

#: What a Hub repo id looks like: ``org/name``.
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def snapshot(
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
    if not REPO_ID.match(repo_id):
        raise ValueError(f"push_folder: repo id must look like 'org/name', got {repo_id!r}")
    files = folder_files(folder)
    if not files:
        raise ZooPushError(f"{folder}: no files to push (hidden files are left out)")
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        staging = Path(tmp) / folder.resolve().name
        for rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / rel, staging / rel)
        if is_model_folder(staging):
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


def cached_revision(repo_id: str) -> str | None:
    """The commit sha of ``main`` in the local Hub cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, CONFIG_NAME)
    if isinstance(found, str):
        return Path(found).parent.name
    return None
