"""Losses by config name. Both compute the same float32 numbers, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import torch

from runner.config import LossName

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def manual_mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error written out, as in seeds 002 and 003."""
    return ((y_hat - y) ** 2).mean()


LOSSES: dict[LossName, Callable[[], Loss]] = {
    LossName.manual: lambda: manual_mse,
    LossName.mse: torch.nn.MSELoss,
}
assert set(LOSSES) == set(LossName), "runner/config.py must list the same loss names"


def build_loss(name: LossName) -> Loss:
    return LOSSES[name]()
