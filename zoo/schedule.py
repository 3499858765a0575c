"""The training-loop pieces :func:`zoo.train.fit` and :func:`zoo.train_tsu.fit_tsu` share.

- :class:`HalfCosineLR`: the per-iteration half-cosine learning rate from ``base_lr`` to 0, no warm-up;
- :class:`BestEpoch`: model selection, keeping a copy of the weights of the best epoch so far (by a
  key where larger is better) and the number of evaluations since it (for ``patience``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HalfCosineLR:
    """Set ``lr = 0.5 * base_lr * (1 + cos(pi * step / total_steps))`` on every param group, per step.

    Args:
        optimizer: the optimizer whose param groups get the rate.
        base_lr: the rate at step 0.
        total_steps: the number of optimizer steps of the whole run (>= 0); the rate reaches 0 there.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int) -> None:
        if total_steps < 0:
            raise ValueError(f"HalfCosineLR: total_steps must be >= 0, got {total_steps}")
        self.optimizer, self.base_lr, self.total_steps = optimizer, float(base_lr), int(total_steps)
        #: Index of the step the last :meth:`next` call set the rate for (-1 before the first).
        self.step = -1

    def next(self) -> float:
        """Advance to the next step, set its rate on the optimizer and return it."""
        if self.step + 1 >= self.total_steps:
            raise ValueError(f"HalfCosineLR: all {self.total_steps} steps are taken")
        self.step += 1
        lr = 0.5 * self.base_lr * (1.0 + math.cos(math.pi * self.step / self.total_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr


class BestEpoch:
    """The best epoch so far by a selection key (larger is better; ties keep the earlier epoch).

    Attributes:
        key: the best key offered so far (None before the first offer).
        epoch: 0-based index of the best epoch (-1 before the first offer).
        stale: offers since the best one (0 right after an improvement).
    """

    def __init__(self) -> None:
        self.key: tuple[float, ...] | None = None
        self.epoch = -1
        self.stale = 0
        self._state: dict[str, Tensor] | None = None

    def offer(self, key: tuple[float, ...], epoch: int, module: nn.Module) -> bool:
        """Keep a copy of ``module``'s weights when ``key`` beats the best key; True when it did."""
        if self.key is None or key > self.key:
            self.key, self.epoch, self.stale = key, epoch, 0
            self._state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            return True
        self.stale += 1
        return False

    def restore(self, module: nn.Module) -> None:
        """Load the best epoch's weights into ``module`` (nothing when no epoch was offered)."""
        if self._state is not None:
            module.load_state_dict(self._state)
