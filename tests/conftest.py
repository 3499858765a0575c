"""Root conftest: a Hub-compatible server on 127.0.0.1 for the whole session (see ``tests/hub_server.py``).

It runs at import time, before any test module imports ``huggingface_hub`` (which reads its settings
from the environment at import): ``HF_ENDPOINT`` points at the server, ``HF_HOME`` at a session temp
folder (so the Hub cache is fresh), ``HF_TOKEN=dummy``, Xet and telemetry are off, and loopback bypasses
any proxy. ``WSIGYM_CACHE`` is set to a session temp folder unless already set, and so is ``SB3_LOGDIR``
(SB3 makes a log folder at every ``learn()`` of a model built without a TensorBoard folder). Area
fixtures live in the subfolder conftests.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# pytest (prepend import mode) put tests/ on sys.path to import this file; take it off again, or the
# folder tests/zoo would shadow the zoo package as a namespace package when the cwd is not on sys.path.
if str(Path(__file__).resolve().parent) in sys.path:
    sys.path.remove(str(Path(__file__).resolve().parent))

if "huggingface_hub" in sys.modules:  # its constants would already point at the real Hub
    raise RuntimeError("tests/conftest.py must run before huggingface_hub is imported (a plugin imported it)")

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="wsigym-tests-"))
_spec = importlib.util.spec_from_file_location("hub_server", Path(__file__).with_name("hub_server.py"))
hub_server_module = importlib.util.module_from_spec(_spec)
sys.modules["hub_server"] = hub_server_module
_spec.loader.exec_module(hub_server_module)

HUB = hub_server_module.HubServer(_SESSION_DIR / "hub-server").start()

for _var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_XET_CACHE"):
    os.environ.pop(_var, None)
os.environ.update(
    {
        "HF_ENDPOINT": HUB.endpoint,
        "HF_HOME": str(_SESSION_DIR / "hf-home"),
        "HF_TOKEN": "dummy",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
)
os.environ.setdefault("WSIGYM_CACHE", str(_SESSION_DIR / "wsigym-cache"))
os.environ.setdefault("SB3_LOGDIR", str(_SESSION_DIR / "sb3-logs"))


def _cleanup() -> None:
    HUB.stop()
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


atexit.register(_cleanup)


@pytest.fixture(scope="session")
def hub_server():
    """The session's :class:`hub_server.HubServer` (``.endpoint``, ``.store``, ``.log``)."""
    return HUB


@pytest.fixture(scope="session")
def hf_home() -> Path:
    """``HF_HOME`` of the session (the Hub cache is ``<hf_home>/hub``)."""
    return Path(os.environ["HF_HOME"])


# ---------------------------------------------------------------------------------------- real slides
def _real_slides_dir() -> Path:
    """The real slides of ``../shared/data/slides`` next to the checkout, or of ``$WSIGYM_SHARED_DATA``
    (for a clone made elsewhere); tests that need them skip when neither holds them."""
    for root in (
        os.environ.get("WSIGYM_SHARED_DATA"),
        Path(__file__).resolve().parents[2] / "shared" / "data",
    ):
        if root and (Path(root) / "slides").is_dir():
            return Path(root) / "slides"
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"


def _real_slide(name: str) -> Path:
    path = _real_slides_dir() / name
    if not path.is_file():
        pytest.skip(f"real slide {path} not available")
    return path


@pytest.fixture(scope="session")
def cmu() -> Path:
    """The 1-level Aperio region at 20x (skips when the shared data is absent)."""
    return _real_slide("cmu_small_region.svs")


@pytest.fixture(scope="session")
def tcga() -> Path:
    """The 2-level TCGA section without mpp (skips when the shared data is absent)."""
    return _real_slide("tcga-cr-7395-01a-01-ts1.svs")


# ---------------------------------------------------------------------------------------- torch threads
@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Every test runs torch on one thread: the tensors here are tiny, and on CI's two shared cores
    multi-threaded torch spins (measured up to ~40x slower on the slide tests)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
