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


class Linear(torch.nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], b: torch.Tensor | None) -> None:
        """weights (a, or w1..wk) and b: one value per member, shape [members]."""
        super().__init__()
        self.w = torch.nn.ModuleDict({n: torch.nn.ParameterList(_one_each(v))
                                         for n, v in weights.items()})  # fmt: skip
        self.b = None if b is None else torch.nn.ParameterList(_one_each(b))
        # Plain lists of the same tensors: ParameterList's indexing costs a lookup each time.
        self.by_name = {n: list(params) for n, params in self.w.items()}
        if self.b is not None:
            self.by_name["b"] = list(self.b)
        self.weights = list(weights)

    def forward(self, x: Features) -> torch.Tensor:
        """x: [features, points] (or [features, members, points]), or the tuple of its rows
        -> predictions [members, points]. The joined parameters stay in `values` for the
        loop to record (before the step changes them)."""
        self.values = {name: joined(params) for name, params in self.by_name.items()}
        first, *others = self.weights
        y = self.values[first] * x[0]  # one feature: a * x, the notebooks' numbers
        for i, name in enumerate(others, start=1):
            y = y + self.values[name] * x[i]
        return y if self.b is None else y + self.values["b"]

    def stacked(self, name: str) -> torch.Tensor:
        """Parameter `name` of every member, shape [members, 1] (autograd flows back to each)."""
        return joined(self.by_name[name])

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
