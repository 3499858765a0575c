"""Small things the Ray tests ship to their workers (importable there through ``PYTHONPATH``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from wsigym.slides.encoders import TorchPatchEncoder
from wsigym.slides.synthetic_slides import write_aperio_tiff


class MeanColour(torch.nn.Module):
    """``(B, 3, S, S) -> (B, 4)``: the mean colour and its mean, through one seeded linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


class SlowEncoder(TorchPatchEncoder):
    """A :class:`TorchPatchEncoder` that sleeps ``delay`` seconds per batch (to kill a job mid-way) and,
    with a ``load_log`` file, appends the process id to it each time it is unpickled (in a worker)."""

    delay = 0.0
    load_log: str | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return super().__call__(images)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.load_log is not None:
            with open(self.load_log, "a") as f:
                f.write(f"{os.getpid()}\n")


def tiny_encoder(seed: int = 0, delay: float = 0.0, load_log: Path | None = None) -> SlowEncoder:
    torch.manual_seed(seed)
    encoder = SlowEncoder(MeanColour(), name="meancolour", input_size=16)
    encoder.delay = delay
    encoder.load_log = None if load_log is None else str(load_log)
    return encoder


def write_slides(folder: Path, count: int, side: int = 1024) -> Path:
    """``count`` synthetic 20x slides ``s0.svs ...`` of ``side``^2 px."""
    folder.mkdir(parents=True, exist_ok=True)
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
