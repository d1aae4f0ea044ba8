"""Mini-batches: which points each step of an epoch sees.

batch_size points a step, the last step taking what is left (or dropped, with drop_last).
With shuffle, each epoch walks the points in a fresh order drawn from each member's seed
(torch.randperm on a generator of its own, on the CPU: the same order on every device);
without, in data order. With `log`, every step is recorded too (log_steps).
"""

from __future__ import annotations

import math

import torch


class MiniBatches:
    def __init__(
        self, size: int, shuffle: bool, drop_last: bool, seeds: list[int], n: int,
        device: torch.device, log: bool = False,
    ) -> None:  # fmt: skip
        self.size, self.n, self.device, self.log = size, n, device, log
        self.steps = n // size if drop_last else math.ceil(n / size)
        self.generators = [torch.Generator().manual_seed(s) for s in seeds] if shuffle else None

    def epoch(self) -> list[torch.Tensor | slice]:
        """Each step's points: a slice of the data (in data order), or the indices [members,
        size] of each member's own order."""
        cuts = [slice(s * self.size, (s + 1) * self.size) for s in range(self.steps)]
        if self.generators is None:
            return cuts
        order = torch.stack([torch.randperm(self.n, generator=g) for g in self.generators])
        order = order.to(self.device)
        return [order[:, cut] for cut in cuts]
