"""Fixtures of the fault suite: a Hub endpoint that accepts connections and never answers, the real
console scripts in a subprocess, small model folders and a tiny torch patch encoder.

Every test of ``tests/faults`` is marked ``fault`` (``pytest -m fault`` runs just this suite).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import tiny_abmil


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.fault)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a socket that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # keep it open, say nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A saved tiny ABMIL (config.json + model.safetensors + card)."""
    return tiny_abmil().save_pretrained(tmp_path / "abmil-tiny")


def _write_slides(folder: Path, count: int, side: int) -> Path:
    from wsigym.slides.synthetic_slides import write_aperio_tiff

    for i in range(count):
        write_aperio_tiff(
            folder / f"s{i}.svs",
            width=side,
            height=side,
            mpp=0.5,
            levels=2,
            seed=i,
            tumour_regions=[(side // 4, side // 4, 3 * side // 4, 3 * side // 4)],
        )
    return folder


@pytest.fixture(scope="session")
def small_slides(tmp_path_factory) -> Path:
    """A folder of three 2048^2 px synthetic slides at 0.5 um/px (20x), two levels."""
    return _write_slides(tmp_path_factory.mktemp("small-slides"), 3, 2048)


@pytest.fixture(scope="session")
def tiny_slides(tmp_path_factory) -> Path:
    """A folder of five 1024^2 px synthetic slides at 0.5 um/px (20x), two levels."""
    return _write_slides(tmp_path_factory.mktemp("tiny-slides"), 5, 1024)
