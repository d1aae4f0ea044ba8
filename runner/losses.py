"""Losses by config name: one loss per member of a batch, over the last dimension (the
points), kept as a column [members, 1] like the parameters. Both compute the same float32
numbers, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import torch

from runner.config import LossName

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def manual_mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error written out, as in seeds 002 and 003."""
    return ((y_hat - y) ** 2).mean(dim=-1, keepdim=True)


def torch_mse() -> Loss:
    """torch.nn.MSELoss per point; the mean over each member's points is the "mean"
    reduction of a single run (its backward divides by the number of points)."""
    mse = torch.nn.MSELoss(reduction="none")
    return lambda y_hat, y: mse(y_hat, y).mean(dim=-1, keepdim=True)


LOSSES: dict[LossName, Callable[[], Loss]] = {
    LossName.manual: lambda: manual_mse,
    LossName.mse: torch_mse,
}
assert set(LOSSES) == set(LossName), "runner/config.py must list the same loss names"


def build_loss(name: LossName) -> Loss:
    return LOSSES[name]()
