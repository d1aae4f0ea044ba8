"""Learning-rate schedules by config name, stepped once per epoch after the optimizer.

The torch optimizers get torch.optim.lr_scheduler's own schedulers. The hand-written
optimizer gets ManualSchedule: the same recurrences, written out, so that each epoch's lr
is the same float either way. A constant schedule is no schedule at all (None).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from runner.config import ScheduleConfig, ScheduleName
from runner.optimizers import ManualSGD, Optimizer


class Schedule(Protocol):
    lr: float  # the lr of the coming step

    def step(self) -> None: ...


class TorchSchedule:
    """A torch.optim.lr_scheduler scheduler of a torch optimizer."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def step(self) -> None:
        self.scheduler.step()


class ManualSchedule:
    """torch.optim.lr_scheduler's StepLR, ExponentialLR and CosineAnnealingLR for the
    hand-written optimizer: each epoch's lr from the previous one, by the recurrences of
    their get_lr(), in the same order of operations (a closed form would round
    differently)."""

    def __init__(self, optimizer: ManualSGD, cfg: ScheduleConfig, t_max: int) -> None:
        self.optimizer, self.cfg, self.t_max = optimizer, cfg, t_max
        self.base = optimizer.lr
        self.epoch = 0  # torch's last_epoch

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    def step(self) -> None:
        self.epoch += 1
        self.optimizer.lr = self._next(self.optimizer.lr)

    def _next(self, lr: float) -> float:
        k, cfg = self.epoch, self.cfg
        if cfg.name == ScheduleName.step:
            return lr * cfg.gamma if k % cfg.step_size == 0 else lr
        if cfg.name == ScheduleName.exponential:
            return lr * cfg.gamma
        # cosine; past t_max it climbs back, as torch's does
        t, low = self.t_max, cfg.eta_min or 0.0
        if (k - 1 - t) % (2 * t) == 0:
            return lr + (self.base - low) * (1 - math.cos(math.pi / t)) / 2
        return (1 + math.cos(math.pi * k / t)) / (1 + math.cos(math.pi * (k - 1) / t)) * (
            lr - low
        ) + low


def build_schedule(cfg: ScheduleConfig, optimizer: Optimizer, epochs: int) -> Schedule | None:
    """The optimizer's schedule; None for a constant lr."""
    if cfg.name == ScheduleName.constant:
        return None
    t_max = cfg.t_max if cfg.t_max is not None else epochs
    if isinstance(optimizer, ManualSGD):
        return ManualSchedule(optimizer, cfg, t_max)
    lr_scheduler = torch.optim.lr_scheduler
    if cfg.name == ScheduleName.step:
        scheduler = lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma)
    elif cfg.name == ScheduleName.exponential:
        scheduler = lr_scheduler.ExponentialLR(optimizer, cfg.gamma)
    else:
        scheduler = lr_scheduler.CosineAnnealingLR(optimizer, t_max, cfg.eta_min or 0.0)
    return TorchSchedule(scheduler)
