"""The epoch loop: forward, loss, zero_grad, backward, step, and the per-epoch history.

The history stays on the device and comes back to the host one chunk at a time, so a
run pays one host sync per chunk, not one per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from runner.losses import Loss
from runner.model import Linear
from runner.optimizers import Optimizer


class Diverged(Exception):
    """A loss, parameter or gradient went non-finite; the rows before it were yielded."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"diverged at epoch {epoch}: non-finite loss, parameter or gradient")
        self.epoch = epoch


def history_columns(model: Linear) -> list[str]:
    names = model.names()
    return ["epoch", "loss", *names, *(f"grad_{n}" for n in names)]


def train(
    model: Linear,
    loss_fn: Loss,
    optimizer: Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    zero_grad: bool = True,
    chunk: int = 1000,
) -> Iterator[pd.DataFrame]:
    """Run the epochs; yield the history every `chunk` epochs and at the end.

    Row k holds epoch k's loss, the parameters that loss was computed at (before the
    step, as seed 002 prints them) and the gradient the step then used. At the first
    non-finite row, yield the rows before it and raise Diverged. Finiteness is checked
    per chunk, on the host copy, so it costs no extra sync.
    """
    params = list(model.parameters())
    columns = history_columns(model)
    rows = torch.empty((min(chunk, epochs), len(columns) - 1), dtype=x.dtype, device=x.device)
    first = 0  # epoch of rows[0]
    for epoch in range(epochs):
        loss = loss_fn(model(x), y)
        if zero_grad:  # false keeps last epoch's gradient, so backward() adds to it (seed 001)
            optimizer.zero_grad()
        loss.backward()
        # One small device-side copy; stack() snapshots the parameters before step() moves them.
        rows[epoch - first] = torch.stack(
            [loss.detach(), *(p.detach() for p in params), *(p.grad for p in params)]
        )
        optimizer.step()
        if epoch - first + 1 == len(rows) or epoch == epochs - 1:
            frame = _to_frame(rows[: epoch - first + 1], first, columns)
            finite = np.isfinite(frame.to_numpy()).all(axis=1)
            if not finite.all():
                bad = int(np.argmin(finite))
                if bad:
                    yield frame.iloc[:bad]
                raise Diverged(first + bad)
            yield frame
            first = epoch + 1


def _to_frame(rows: torch.Tensor, first: int, columns: list[str]) -> pd.DataFrame:
    values = rows.cpu().double().numpy()  # the one host sync of this chunk
    frame = pd.DataFrame(values, columns=columns[1:])
    frame.insert(0, "epoch", range(first, first + len(frame)))
    return frame
