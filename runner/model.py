"""The model: y = a*x + b, or y = a*x without the bias (seed 000's theta)."""

from __future__ import annotations

import torch

from runner.config import ModelConfig


class Linear(torch.nn.Module):
    """Scalar parameters a (and b), so the history records them by name."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor | None) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(a)
        self.b = None if b is None else torch.nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.b is None:
            return self.a * x
        return self.a * x + self.b

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.named_parameters())


def build_model(cfg: ModelConfig, device: torch.device) -> Linear:
    """The model on the device. Random init draws a, then b, from torch's seeded generator."""
    if cfg.init == "random":
        # Drawn on the CPU so a seed gives the same start on every device.
        a, b = torch.randn(()), torch.randn(())
    else:
        a, b = torch.tensor(cfg.a), torch.tensor(cfg.b)
    return Linear(a.to(device), b.to(device) if cfg.bias else None)
