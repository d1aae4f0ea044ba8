"""Optimizers by config name. The loop only calls zero_grad() and step()."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import torch

from runner.config import OPTIMIZER_NAMES


class Optimizer(Protocol):
    def zero_grad(self) -> None: ...
    def step(self) -> None: ...


class ManualSGD:
    """Plain gradient descent written out: p -= lr * p.grad, as in seeds 000 and 003."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float) -> None:
        self.params = list(params)
        self.lr = lr

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:  # None before the first backward()
                p.grad.zero_()

    @torch.no_grad()  # the update itself must not become part of the autograd graph
    def step(self) -> None:
        for p in self.params:
            p -= self.lr * p.grad


def torch_sgd(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr)


OPTIMIZERS: dict[str, Callable[[Iterable[torch.nn.Parameter], float], Optimizer]] = {
    "manual": ManualSGD,
    "sgd": torch_sgd,
}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES, "runner/config.py must list the same names"


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> Optimizer:
    return OPTIMIZERS[name](params, lr)
