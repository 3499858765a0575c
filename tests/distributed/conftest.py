"""One local Ray cluster (2 CPUs, no dashboard, no GPU) shared by every test of ``tests/distributed``.

Starting Ray costs seconds, so the cluster is session-wide. Its workers inherit this process's
environment: ``PYTHONPATH`` gets the checkout and this folder (for :mod:`raykit`), and ``WSIGYM_CACHE``
is the test session's (set by the root conftest).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """``ray``, initialised with a local 2-CPU cluster for the session."""
    ray = pytest.importorskip("ray")
    paths = [str(ROOT), str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    yield ray
    if started:
        ray.shutdown()
