"""The epoch loop: forward, loss, zero_grad, backward, step, and the per-epoch history.

The history stays on the device and comes back to the host one chunk at a time, so a
run pays one host sync per chunk, not one per epoch (the last chunk brings the final
parameters along, for the divergence check of the last step).
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


class GradCheckFailed(EndedEarly):
    """Autograd and the analytic gradient disagreed by more than the tolerance at `epoch`."""

    def __init__(self, epoch: int, error: float, tol: float) -> None:
        message = f"gradient check failed at epoch {epoch}: error {error:.3g} > {tol:g}"
        super().__init__(epoch, message)
        self.error = error


class Converged(EndedEarly):
    """The loss changed by less than the tolerance at `epoch`, whose row was the last yielded."""

    def __init__(self, epoch: int, tol: float) -> None:
        super().__init__(epoch, f"converged at epoch {epoch}: loss changed by less than {tol}")


def history_columns(model: Linear, check_grad: bool = False) -> list[str]:
    names = model.names()
    columns = ["epoch", "loss", *names, *(f"grad_{n}" for n in names)]
    return [*columns, "grad_check"] if check_grad else columns


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
    check_grad: float | None = None,
) -> Iterator[pd.DataFrame]:
    """Run the epochs; yield the history every `chunk` epochs and at the end.

    Row k holds epoch k's loss, the parameters that loss was computed at (before the
    step, as seed 002 prints them) and the gradient the step then used.

    With `check_grad` (a tolerance), column grad_check holds each epoch's largest
    relative difference between autograd's gradient and the analytic one,
    2/N sum (y_hat - y) * x and 2/N sum (y_hat - y), computed on the device.

    The loop ends early by raising, after yielding every row it keeps: Diverged at the
    first non-finite row, GradCheckFailed at the first grad_check above its tolerance,
    Converged once the loss changes by less than `tol`. All are checked on the host copy
    of each chunk, so they cost no extra sync; the epochs a chunk ran past the stop are
    undone by restoring the parameters from the history.
    On Ctrl-C or SIGTERM the rows recorded so far are yielded before the interrupt goes on.
    """
    params = list(model.parameters())
    columns = history_columns(model, check_grad is not None)
    rows = torch.empty((min(chunk, epochs), len(columns) - 1), dtype=x.dtype, device=x.device)
    slots = rows.unbind(0)  # views of the rows: stack() writes an epoch straight into one
    values = [p.detach() for p in params]  # views too: they follow the in-place updates
    first, recorded = 0, 0  # epoch of rows[0]; rows filled since
    final_values = None  # the parameters after the last step, with the last chunk
    last_loss = math.nan  # of the previous chunk, for the first change of this one
    try:
        for epoch in range(epochs):
            y_hat = model(x)
            loss = loss_fn(y_hat, y)
            if zero_grad:  # false keeps the last gradient, so backward() adds to it (seed 001)
                optimizer.zero_grad()
            loss.backward()
            row = [loss.detach(), *values, *(p.grad for p in params)]
            if check_grad is not None:
                row.append(_grad_error(y_hat.detach() - y, x, params))
            # One small device-side kernel; it snapshots the parameters before step().
            torch.stack(row, out=slots[recorded])
            recorded += 1
            optimizer.step()
            if recorded == len(rows) or epoch == epochs - 1:
                # The last chunk brings the final parameters along: one host sync, not two.
                final = torch.stack([p.detach() for p in params]) if epoch == epochs - 1 else None
                frame, final_values = _to_frame(rows[:recorded], first, columns, final)
                stop = _first_stop(frame, last_loss, tol, check_grad)
                if stop is not None:
                    yield from _end_early(frame, *stop, params, tol, check_grad)
                yield frame
                first, recorded, last_loss = epoch + 1, 0, frame["loss"].iloc[-1]
    except (KeyboardInterrupt, SystemExit):
        if recorded:  # the completed epochs of the unfinished chunk
            yield _to_frame(rows[:recorded], first, columns)[0]
        raise
    if final_values is not None and not np.isfinite(final_values).all():
        raise Diverged(epochs)  # the last step overflowed


def _grad_error(residual: torch.Tensor, x: torch.Tensor, params: list) -> torch.Tensor:
    """Largest |autograd - analytic| / (1 + |analytic|) over the parameters, on the device."""
    analytic = [2 * (residual * x).mean(), 2 * residual.mean()][: len(params)]
    errors = [(p.grad - g).abs() / (1 + g.abs()) for p, g in zip(params, analytic, strict=True)]
    return torch.stack(errors).max()


def _first_stop(
    frame: pd.DataFrame, last_loss: float, tol: float | None, grad_tol: float | None
) -> tuple[int, str] | None:
    """The first row that diverged, failed the gradient check or converged, and which."""
    stops = []
    finite = np.isfinite(frame.to_numpy()).all(axis=1)
    if not finite.all():
        stops.append((int(np.argmin(finite)), "diverged"))
    if grad_tol is not None:
        over = np.flatnonzero(frame["grad_check"].to_numpy() > grad_tol)
        if over.size:
            stops.append((int(over[0]), "grad_check"))
    if tol is not None:
        change = np.abs(np.diff(frame["loss"].to_numpy(), prepend=last_loss))
        calm = np.flatnonzero(change < tol)
        if calm.size:
            stops.append((int(calm[0]), "converged"))
    return min(stops) if stops else None


def _end_early(
    frame: pd.DataFrame,
    stop: int,
    reason: str,
    params: list[torch.nn.Parameter],
    tol: float | None,
    grad_tol: float | None,
) -> Iterator[pd.DataFrame]:
    epoch = int(frame["epoch"].iloc[stop])
    if reason == "diverged":
        if stop:
            yield frame.iloc[:stop]
        raise Diverged(epoch)
    yield frame.iloc[: stop + 1]
    if reason == "grad_check":
        raise GradCheckFailed(epoch, float(frame["grad_check"].iloc[stop]), grad_tol or 0.0)
    if stop + 1 < len(frame):
        # The parameters after step `stop` are the ones row stop + 1 was computed at.
        names = frame.columns[2 : 2 + len(params)]
        with torch.no_grad():
            for p, name in zip(params, names, strict=True):
                p.fill_(float(frame[name].iloc[stop + 1]))
    raise Converged(epoch, tol or 0.0)


def _to_frame(
    rows: torch.Tensor, first: int, columns: list[str], final: torch.Tensor | None = None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The chunk as a table, and `final` (the parameters after the last step) on the host."""
    both = rows.reshape(-1) if final is None else torch.cat([rows.reshape(-1), final])
    values = both.cpu().double().numpy()  # the one host sync of this chunk
    frame = pd.DataFrame(values[: rows.numel()].reshape(rows.shape), columns=columns[1:])
    frame.insert(0, "epoch", range(first, first + len(frame)))
    return frame, None if final is None else values[rows.numel() :]
