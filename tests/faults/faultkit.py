"""Helpers of the fault suite (imported by its tests): the console scripts in a fresh process, a
one-line-error check, a tiny ABMIL and a tiny torch patch encoder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def run_console(
    script: str, args: Sequence[str], *, timeout: float = 120, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run ``python -m <wsigym|zoo.cli> args`` (the console scripts' code) in a fresh process."""
    module = {"wsigym": "wsigym", "zoo": "zoo.cli"}[script]
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_python(code: str, *, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess, prefix: str) -> str:
    """The single stderr line of a failed command (asserting there is no traceback)."""
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
    return lines[0]


def tiny_abmil(seed: int = 0):
    import zoo

    torch.manual_seed(seed)
    return zoo.create_model("abmil", in_dim=8, hidden=16, attn_dim=16).eval()


class MeanColourNet(torch.nn.Module):
    """``(B, 3, S, S) -> (B, 4)``: pooled colour through one linear layer (a real, tiny network)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def tiny_encoder(seed: int = 0):
    """A :class:`~wsigym.slides.encoders.TorchPatchEncoder` over :class:`MeanColourNet` at 16 px,
    initialised from ``seed``."""
    from wsigym.slides.encoders import TorchPatchEncoder

    torch.manual_seed(seed)
    return TorchPatchEncoder(MeanColourNet(), name="meancolour", input_size=16)
