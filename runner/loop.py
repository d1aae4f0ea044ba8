"""The epoch loop: forward, loss, zero_grad, backward, step, and the per-epoch history.

The history stays on the device and comes back to the host one chunk at a time, so a
run pays one host sync per chunk, not one per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from runner.losses import Loss
from runner.model import Linear
from runner.optimizers import Optimizer


class EndedEarly(Exception):
    """The loop stopped before its last epoch; every row up to `epoch` was yielded."""

    def __init__(self, epoch: int, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch


class Diverged(EndedEarly):
    """A loss, parameter or gradient went non-finite at `epoch`; the rows before it were yielded."""

    def __init__(self, epoch: int) -> None:
        super().__init__(epoch, f"diverged at epoch {epoch}: a non-finite loss, parameter or grad")


class Converged(EndedEarly):
    """The loss changed by less than the tolerance at `epoch`, whose row was the last yielded."""

    def __init__(self, epoch: int, tol: float) -> None:
        super().__init__(epoch, f"converged at epoch {epoch}: loss changed by less than {tol}")


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
    tol: float | None = None,
) -> Iterator[pd.DataFrame]:
    """Run the epochs; yield the history every `chunk` epochs and at the end.

    Row k holds epoch k's loss, the parameters that loss was computed at (before the
    step, as seed 002 prints them) and the gradient the step then used.

    The loop ends early by raising, after yielding every row it keeps: Diverged at the
    first non-finite row, Converged once the loss changes by less than `tol`. Both are
    checked on the host copy of each chunk, so they cost no extra sync; the epochs a
    chunk ran past the stop are undone by restoring the parameters from the history.
    On Ctrl-C or SIGTERM the rows recorded so far are yielded before the interrupt goes on.
    """
    params = list(model.parameters())
    columns = history_columns(model)
    rows = torch.empty((min(chunk, epochs), len(columns) - 1), dtype=x.dtype, device=x.device)
    first, recorded = 0, 0  # epoch of rows[0]; rows filled since
    last_loss = math.nan  # of the previous chunk, for the first change of this one
    try:
        for epoch in range(epochs):
            loss = loss_fn(model(x), y)
            if zero_grad:  # false keeps the last gradient, so backward() adds to it (seed 001)
                optimizer.zero_grad()
            loss.backward()
            # One small device-side copy; stack() snapshots the parameters before step().
            rows[recorded] = torch.stack(
                [loss.detach(), *(p.detach() for p in params), *(p.grad for p in params)]
            )
            recorded += 1
            optimizer.step()
            if recorded == len(rows) or epoch == epochs - 1:
                frame = _to_frame(rows[:recorded], first, columns)
                stop = _first_stop(frame, last_loss, tol)
                if stop is not None:
                    yield from _end_early(frame, stop, params, tol)
                yield frame
                first, recorded, last_loss = epoch + 1, 0, frame["loss"].iloc[-1]
    except (KeyboardInterrupt, SystemExit):
        if recorded:  # the completed epochs of the unfinished chunk
            yield _to_frame(rows[:recorded], first, columns)
        raise
    if not all(torch.isfinite(p).all() for p in params):  # the last step overflowed
        raise Diverged(epochs)


def _first_stop(frame: pd.DataFrame, last_loss: float, tol: float | None) -> int | None:
    """Index of the first row that diverged or converged, if any."""
    finite = np.isfinite(frame.to_numpy()).all(axis=1)
    bad = None if finite.all() else int(np.argmin(finite))
    if tol is not None:
        losses = frame["loss"].to_numpy()
        change = np.abs(np.diff(losses, prepend=last_loss))
        calm = np.flatnonzero(change < tol)
        if calm.size and (bad is None or calm[0] < bad):
            return int(calm[0])
    return bad


def _end_early(
    frame: pd.DataFrame, stop: int, params: list[torch.nn.Parameter], tol: float | None
) -> Iterator[pd.DataFrame]:
    epoch = int(frame["epoch"].iloc[stop])
    if not np.isfinite(frame.iloc[stop].to_numpy()).all():
        if stop:
            yield frame.iloc[:stop]
        raise Diverged(epoch)
    if stop + 1 < len(frame):
        # The parameters after step `stop` are the ones row stop + 1 was computed at.
        names = frame.columns[2 : 2 + len(params)]
        with torch.no_grad():
            for p, name in zip(params, names, strict=True):
                p.fill_(float(frame[name].iloc[stop + 1]))
    yield frame.iloc[: stop + 1]
    raise Converged(epoch, tol or 0.0)


def _to_frame(rows: torch.Tensor, first: int, columns: list[str]) -> pd.DataFrame:
    values = rows.cpu().double().numpy()  # the one host sync of this chunk
    frame = pd.DataFrame(values, columns=columns[1:])
    frame.insert(0, "epoch", range(first, first + len(frame)))
    return frame
