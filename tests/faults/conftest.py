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


@pytest.fixture(scope="session")
def small_slides(tmp_path_factory) -> Path:
    """A folder of three 2048^2 px synthetic slides at 0.5 um/px (20x), two levels."""
    from wsigym.slides.testslides import write_aperio_tiff

    folder = tmp_path_factory.mktemp("small-slides")
    for i in range(3):
        write_aperio_tiff(
            folder / f"s{i}.svs",
            width=2048,
            height=2048,
            mpp=0.5,
            levels=2,
            seed=i,
            tumour_regions=[(512, 512, 1536, 1536)],
        )
    return folder
