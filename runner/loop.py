"""The epoch loop: forward, loss, zero_grad, backward, step, and the per-epoch history.

The history stays on the device and comes back to the host one chunk at a time, so a
run pays one host sync per chunk, not one per epoch (the last chunk brings the final
parameters along, for the divergence check of the last step). `train` returns how the
run ended as a value: finished, converged, diverged, failed its gradient check, stopped.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
import torch

from runner.losses import Loss
from runner.model import Linear
from runner.optimizers import Optimizer


class How(str, Enum):
    """How a training ended."""

    finished = "finished"  # every epoch ran
    converged = "converged"  # stop.tol: the loss changed by less than the tolerance
    diverged = "diverged"  # a non-finite loss, parameter or gradient
    grad_check_failed = "grad_check_failed"  # autograd and the analytic gradient disagreed
    interrupted = "interrupted"  # a stop signal, at an epoch boundary


@dataclass(frozen=True)
class Outcome:
    how: How
    epochs: int  # epochs recorded, i.e. rows handed to `write`
    at_epoch: int | None = None  # where it converged, diverged or failed its check
    detail: str = ""


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
    write: Callable[[pd.DataFrame], None],
    zero_grad: bool = True,
    chunk: int = 1000,
    tol: float | None = None,
    check_grad: float | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Run the epochs, hand the history to `write` every `chunk` epochs, say how it ended.

    Row k holds epoch k's loss, the parameters that loss was computed at (before the
    step, as seed 002 prints them) and the gradient the step then used.

    With `check_grad` (a tolerance), column grad_check holds each epoch's largest
    relative difference between autograd's gradient and the analytic one,
    2/N sum (y_hat - y) * x and 2/N sum (y_hat - y), computed on the device.

    The loop ends early, after writing every row it keeps: at the first non-finite row
    (diverged), at the first grad_check above its tolerance, once the loss changes by
    less than `tol` (converged), or at the epoch boundary after `stop` is set. All but
    the last are found on the host copy of each chunk, so they cost no extra sync; the
    epochs a chunk ran past the end are undone by restoring the parameters from the
    history. On Ctrl-C the rows recorded and not yet written are written first.
    """
    params = list(model.parameters())
    names = model.names()
    columns = history_columns(model, check_grad is not None)
    rows = torch.empty((min(chunk, epochs), len(columns) - 1), dtype=x.dtype, device=x.device)
    slots = rows.unbind(0)  # views of the rows: stack() writes an epoch straight into one
    values = [p.detach() for p in params]  # views too: they follow the in-place updates
    first, recorded = 0, 0  # epoch of rows[0]; rows filled since
    last_loss = math.nan  # of the previous chunk, for the first change of this one
    try:
        for epoch in range(epochs):
            if stop is not None and stop.is_set():  # a cheap flag, no host sync
                if recorded:
                    write(_to_frame(rows[:recorded], first, columns)[0])
                return Outcome(How.interrupted, epoch)
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
                last = epoch == epochs - 1
                final = torch.stack([p.detach() for p in params]) if last else None
                frame, final_values = _to_frame(rows[:recorded], first, columns, final)
                first, recorded = epoch + 1, 0  # handed over below, whatever happens there
                ending = _first_stop(frame, last_loss, tol, check_grad)
                if ending is not None:
                    return _end_early(frame, *ending, params, names, write)
                write(frame)
                if last and not np.isfinite(final_values).all():
                    return Outcome(How.diverged, epochs, epochs, "the last step overflowed")
                last_loss = frame["loss"].iloc[-1]
    except KeyboardInterrupt:
        if recorded:  # the completed epochs of the unfinished chunk
            write(_to_frame(rows[:recorded], first, columns)[0])
        raise
    return Outcome(How.finished, epochs)


def _grad_error(residual: torch.Tensor, x: torch.Tensor, params: list) -> torch.Tensor:
    """Largest |autograd - analytic| / (1 + |analytic|) over the parameters, on the device."""
    analytic = [2 * (residual * x).mean(), 2 * residual.mean()][: len(params)]
    errors = [(p.grad - g).abs() / (1 + g.abs()) for p, g in zip(params, analytic, strict=True)]
    return torch.stack(errors).max()


def _first_stop(
    frame: pd.DataFrame, last_loss: float, tol: float | None, grad_tol: float | None
) -> tuple[int, How] | None:
    """The first row that diverged, failed the gradient check or converged, and which."""
    stops: list[tuple[int, How]] = []
    finite = np.isfinite(frame.to_numpy()).all(axis=1)
    if not finite.all():
        stops.append((int(np.argmin(finite)), How.diverged))
    if grad_tol is not None:
        over = np.flatnonzero(frame["grad_check"].to_numpy() > grad_tol)
        if over.size:
            stops.append((int(over[0]), How.grad_check_failed))
    if tol is not None:
        change = np.abs(np.diff(frame["loss"].to_numpy(), prepend=last_loss))
        calm = np.flatnonzero(change < tol)
        if calm.size:
            stops.append((int(calm[0]), How.converged))
    return min(stops, key=lambda stop: stop[0]) if stops else None


def _end_early(
    frame: pd.DataFrame,
    stop: int,
    how: How,
    params: list[torch.nn.Parameter],
    names: tuple[str, ...],
    write: Callable[[pd.DataFrame], None],
) -> Outcome:
    """Write the rows the run keeps, and leave the model as the stopping epoch left it."""
    epoch = int(frame["epoch"].iloc[stop])
    kept = frame.iloc[:stop] if how == How.diverged else frame.iloc[: stop + 1]
    if len(kept):
        write(kept)
    epochs = int(kept["epoch"].iloc[-1]) + 1 if len(kept) else epoch
    if how == How.grad_check_failed:
        error = float(frame["grad_check"].iloc[stop])
        return Outcome(
            how, epochs, epoch, f"gradient check failed at epoch {epoch}: error {error:.3g}"
        )
    if how == How.converged and stop + 1 < len(frame):
        # The parameters after step `stop` are the ones row stop + 1 was computed at.
        with torch.no_grad():
            for p, name in zip(params, names, strict=True):
                p.fill_(float(frame[name].iloc[stop + 1]))
    return Outcome(how, epochs, epoch)


def _to_frame(
    rows: torch.Tensor, first: int, columns: list[str], final: torch.Tensor | None = None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The chunk as a table, and `final` (the parameters after the last step) on the host."""
    both = rows.reshape(-1) if final is None else torch.cat([rows.reshape(-1), final])
    values = both.cpu().double().numpy()  # the one host sync of this chunk
    frame = pd.DataFrame(values[: rows.numel()].reshape(rows.shape), columns=columns[1:])
    frame.insert(0, "epoch", range(first, first + len(frame)))
    return frame, None if final is None else values[rows.numel() :]
