"""Which cluster a command runs on: ``--backend {local,ray}`` and ``--address``, and connecting to it.

``local`` (the default) runs in this process and never imports Ray. ``ray`` connects to the cluster at
``--address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``; default: ``$RAY_ADDRESS``, else a
local cluster on this machine's cores and GPUs, started on first use and stopped at exit). Ray is an
optional dependency: ``pip install 'wsigym[ray]'``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

BACKENDS = ("local", "ray")


def require_ray() -> Any:
    """Import and return the ``ray`` module.

    Raises:
        ImportError: naming the extra to install, when Ray is absent.
    """
    try:
        import ray
    except ImportError:
        raise ImportError(
            "--backend ray needs Ray: pip install 'wsigym[ray]' (or pip install 'ray[tune]>=2.9')"
        ) from None
    return ray


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`.

    Raises:
        ValueError: naming the argument and the choices.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Any:
    """Connect this process to a Ray cluster (once; later calls reuse the connection) and return ``ray``.

    Args:
        address: ``None`` (``$RAY_ADDRESS``, else start a local cluster), ``"auto"`` (the cluster started
            on this machine with ``ray start --head``) or a cluster address.
        num_cpus, num_gpus: size of a local cluster started here (default: all cores and GPUs); ignored
            when joining an existing cluster.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if address is None:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    ray.init(address=address, **kwargs)
    return ray


def gpus_per_task(device: str) -> float:
    """GPUs a task asks Ray for: 1 when ``device`` is a CUDA device, else 0 (a CPU task)."""
    return 1.0 if str(device).startswith("cuda") else 0.0


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend {local,ray}`` and ``--address`` to a command."""
    parser.add_argument(
        "--backend",
        default="local",
        choices=BACKENDS,
        help="'local' (default: this process) or 'ray' (tasks on a Ray cluster; pip install 'wsigym[ray]')",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="with --backend ray: the cluster to join ('auto' for `ray start --head` on this machine, "
        "ray://HOST:10001, HOST:6379; default $RAY_ADDRESS, else a local cluster started for this command)",
    )


def connect_from_args(args: argparse.Namespace) -> Any | None:
    """``connect(args.address)`` when ``args.backend == "ray"`` (else None; ``--address`` alone is refused).

    Raises:
        ValueError: ``--address`` without ``--backend ray``.
    """
    if args.backend != "ray":
        if args.address is not None:
            raise ValueError("--address is only used with --backend ray")
        return None
    return connect(args.address)
