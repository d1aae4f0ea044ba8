"""Optimizers by config name. The loop only calls zero_grad() and step()."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from runner.config import OptimizerConfig, OptimizerName


class Optimizer(Protocol):
    def zero_grad(self) -> None: ...
    def step(self) -> None: ...


class ManualSGD:
    """Gradient descent written out, as in seeds 000 and 003: p <- p - lr * p.grad.

    With momentum it keeps a velocity per parameter, v = momentum * v + g (the first
    v is g itself), and steps along v, or along g + momentum * v with Nesterov: the
    same arithmetic, in the same order, as torch.optim.SGD, so the numbers match.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.nesterov, self.weight_decay = (
            lr,
            momentum,
            nesterov,
            weight_decay,
        )
        self.velocity: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:  # None before the first backward()
                p.grad.zero_()

    @torch.no_grad()  # the update itself must not become part of the autograd graph
    def step(self) -> None:
        for i, p in enumerate(self.params):
            g = p.grad
            # Sums of a term and a scaled term use add's alpha, as torch.optim.SGD does:
            # one rounding instead of two, so the two stay equal bit for bit.
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:
                v = self.velocity[i]
                v = g.clone() if v is None else self.momentum * v + g
                self.velocity[i] = v
                g = g.add(v, alpha=self.momentum) if self.nesterov else v
            p.add_(g, alpha=-self.lr)  # `p -= lr * g` would drift by an ulp now and then


def _manual(params: Iterable[torch.nn.Parameter], lr: float, cfg: OptimizerConfig) -> Optimizer:
    return ManualSGD(params, lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)


def _sgd(params: Iterable[torch.nn.Parameter], lr: float, cfg: OptimizerConfig) -> Optimizer:
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


def _adam(params: Iterable[torch.nn.Parameter], lr: float, cfg: OptimizerConfig) -> Optimizer:
    betas = (cfg.betas[0], cfg.betas[1])
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


Build = Callable[[Iterable[torch.nn.Parameter], float, OptimizerConfig], Optimizer]


@dataclass(frozen=True)
class Entry:
    """An optimizer, and the facts about it that the runner acts on."""

    build: Build
    # Whether, with these settings, each step goes along the gradient alone, so that the
    # loss's 2/λmax decides stability: lr at or above it is warned about, and a search's
    # trial there is pruned before it trains. Not for momentum, nor for Adam's scaled steps.
    stability_limit: Callable[[OptimizerConfig], bool]


def _without_momentum(cfg: OptimizerConfig) -> bool:
    return not cfg.momentum


OPTIMIZERS: dict[OptimizerName, Entry] = {
    OptimizerName.manual: Entry(_manual, stability_limit=_without_momentum),
    OptimizerName.sgd: Entry(_sgd, stability_limit=_without_momentum),
    OptimizerName.adam: Entry(_adam, stability_limit=lambda cfg: False),
}
assert set(OPTIMIZERS) == set(OptimizerName), "runner/config.py must list the same names"


def build_optimizer(
    cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter], lr: float
) -> Optimizer:
    return OPTIMIZERS[cfg.name].build(params, lr, cfg)


def stability_limit_applies(cfg: OptimizerConfig) -> bool:
    """The registry's word on whether lr < 2/λmax decides this optimizer's stability."""
    return OPTIMIZERS[cfg.name].stability_limit(cfg)
