"""The model: y = a*x + b, or y = a*x without the bias (seed 000's theta), for a batch.

A batch holds one model per job trained together (runner/batch.py); a single run is a
batch of one. Each member's a and b are parameters of their own (one value, shape [1, 1]),
so each member's optimizer steps exactly the tensors a single run would step; the forward
pass joins them into columns of shape [members, 1], which broadcast against the points
without a reshape, and computes every member's prediction at once.
"""

from __future__ import annotations

import torch

from runner.config import ModelConfig


class Linear(torch.nn.Module):
    def __init__(self, a: torch.Tensor, b: torch.Tensor | None) -> None:
        """a and b: one value per member, shape [members]."""
        super().__init__()
        self.a = torch.nn.ParameterList(_one_each(a))
        self.b = None if b is None else torch.nn.ParameterList(_one_each(b))
        # Plain lists of the same tensors: ParameterList's indexing costs a lookup each time.
        self.by_name = {"a": list(self.a), **({"b": list(self.b)} if b is not None else {})}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [points] (or [members, points]) -> predictions [members, points]. The joined
        parameters stay in `values` for the loop to record (before the step changes them)."""
        self.values = {name: joined(params) for name, params in self.by_name.items()}
        y = self.values["a"] * x
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
        return len(self.by_name["a"])


def _one_each(values: torch.Tensor) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(v.clone()) for v in values.view(-1, 1).split(1)]


def joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of shape [1, 1] as one of shape [members, 1]; a batch of one needs no copy
    (no op at all, where every op of the loop costs microseconds)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def initial(cfg: ModelConfig, seed: int) -> tuple[float, float]:
    """A member's start (a, b). Random init draws a, then b, from torch's generator seeded
    with the run's seed, on the CPU, so a seed gives the same start on every device."""
    if cfg.init == "random":
        generator = torch.Generator().manual_seed(seed)
        a, b = torch.randn((), generator=generator), torch.randn((), generator=generator)
        return a.item(), b.item()
    return cfg.a, cfg.b


def build_model(cfgs: list[ModelConfig], seeds: list[int], device: torch.device) -> Linear:
    """One member per config (they share `bias`), on the device."""
    starts = torch.tensor([initial(cfg, seed) for cfg, seed in zip(cfgs, seeds, strict=True)])
    a, b = starts[:, 0].to(device), starts[:, 1].to(device)
    return Linear(a, b if cfgs[0].bias else None)
