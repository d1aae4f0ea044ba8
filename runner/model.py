"""The model: y = w . x + b with one weight per feature (y = a*x + b for one feature, the
notebooks' line), or without the bias (seed 000's theta), for a batch.

A batch holds one model per job trained together (runner/batch.py); a single run is a
batch of one. Each member's weights and b are parameters of their own (one value, shape
[1, 1]), so each member's optimizer steps exactly the tensors a single run would step;
the forward pass joins them into columns of shape [members, 1], which broadcast against
the points without a reshape, and computes every member's prediction at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from runner.config import ConfigError, ModelConfig
from runner.data import weight_names

Features = torch.Tensor | Sequence[torch.Tensor]  # x, or its rows: one per feature


class Linear:
    """The members' parameters and their forward pass.

    Not a torch.nn.Module: each member's parameters are leaves of their own, stepped by the
    member's own optimizer, and nothing here needs a Module's hooks or state dict, whose
    attribute handling and call would cost about a tenth of an epoch of this model.
    """

    def __init__(self, weights: dict[str, torch.Tensor], b: torch.Tensor | None) -> None:
        """weights (a, or w1..wk) and b: one value per member, shape [members]."""
        self.by_name = {n: _one_each(v) for n, v in weights.items()}  # name -> one per member
        if b is not None:
            self.by_name["b"] = _one_each(b)
        self.weights = list(weights)
        self.bias = b is not None
        # A batch of one joins nothing: its values are its parameters, once and for all.
        self.alone = len(self.by_name[self.weights[0]]) == 1
        self.values = {n: params[0] for n, params in self.by_name.items()} if self.alone else {}

    def __call__(self, x: Features) -> torch.Tensor:
        """x: [features, points] (or [features, members, points]), or the tuple of its rows
        -> predictions [members, points]. The joined parameters stay in `values` for the
        loop to record (before the step changes them)."""
        if not self.alone:
            self.values = {name: torch.cat(params) for name, params in self.by_name.items()}
        values = self.values
        first, *others = self.weights
        y = values[first] * x[0]  # one feature: a * x, the notebooks' numbers
        for i, name in enumerate(others, start=1):
            y = y + values[name] * x[i]
        return y + values["b"] if self.bias else y

    def stacked(self, name: str) -> torch.Tensor:
        """Parameter `name` of every member, shape [members, 1] (autograd flows back to each)."""
        return joined(self.by_name[name])

    def grads(self) -> list[torch.Tensor]:
        """Each parameter's gradient for every member, [members, 1] each, in `names` order."""
        return [joined([p.grad for p in params]) for params in self.by_name.values()]

    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def member(self, j: int) -> list[torch.nn.Parameter]:
        """Member j's own parameters, for its optimizer."""
        return [params[j] for params in self.by_name.values()]

    def __len__(self) -> int:
        return len(self.by_name[self.weights[0]])


def _one_each(values: torch.Tensor) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(v.clone()) for v in values.view(-1, 1).split(1)]


def joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of shape [1, 1] as one of shape [members, 1]; a batch of one needs no copy
    (no op at all, where every op of the loop costs microseconds)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def initial(cfg: ModelConfig, seed: int, features: int) -> list[float]:
    """A member's start: its weights, then b. Random init draws them in that order from
    torch's generator seeded with the run's seed, on the CPU, so a seed gives the same
    start on every device."""
    if cfg.init == "random":
        generator = torch.Generator().manual_seed(seed)
        return [torch.randn((), generator=generator).item() for _ in range(features + 1)]
    if cfg.w is None:
        return [cfg.a] * features + [cfg.b]
    if len(cfg.w) != features:
        allowed = f"null or a list of {features} numbers (the data have {features} features)"
        raise ConfigError("model.w", cfg.w, allowed)
    return [*cfg.w, cfg.b]


def build_model(
    cfgs: list[ModelConfig], seeds: list[int], features: int, device: torch.device
) -> Linear:
    """One member per config (they share `bias`), on the device."""
    starts = [initial(cfg, seed, features) for cfg, seed in zip(cfgs, seeds, strict=True)]
    columns = torch.tensor(starts).to(device).T  # [parameters, members]
    weights = dict(zip(weight_names(features), columns[:features], strict=True))
    return Linear(weights, columns[features] if cfgs[0].bias else None)
