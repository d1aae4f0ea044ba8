"""The epoch loop: forward, loss, zero_grad, backward, step, and the per-epoch history.

One loop trains a batch of members (runner/model.py): the jobs of a sweep trained
together, or a single run as a batch of one. Each epoch is one forward pass, one loss
and one backward pass for the whole batch; then each member's own optimizer steps that
member's own parameters, so every member follows, bit for bit, the path it would follow
alone. Members end on their own (their epochs, stop.tol, divergence, a failed gradient
check); the others go on.

The history stays on the device and comes back to the host one chunk at a time, so a
run pays one host sync per chunk, not one per epoch (a chunk that ends a member brings
the final parameters along, for the divergence check of its last step). `train` returns
how each member ended as a value: finished, converged, diverged, failed its gradient
check, stopped.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
import torch

from runner.losses import Loss
from runner.minibatch import MiniBatches
from runner.model import Features, Linear
from runner.optimizers import Optimizer
from runner.schedules import Schedule


class How(str, Enum):
    """How a training ended."""

    finished = "finished"  # every epoch ran
    converged = "converged"  # stop.tol: the loss changed by less than the tolerance
    stalled = "stalled"  # stop.patience: val_loss did not improve for that many epochs
    diverged = "diverged"  # a non-finite loss, parameter or gradient
    grad_check_failed = "grad_check_failed"  # autograd and the analytic gradient disagreed
    pruned = "pruned"  # a search's pruner stopped it (Member.report), or it never started
    interrupted = "interrupted"  # a stop signal, at an epoch boundary
    abandoned = "abandoned"  # its history could not be written (Abandon)


class Abandon(Exception):
    """Raised by a member's `write` when its record cannot go on (a full disk): that member
    ends, the others train on. The message is one line."""


@dataclass(frozen=True)
class Outcome:
    how: How
    epochs: int  # epochs recorded, i.e. rows handed to `write`
    at_epoch: int | None = None  # where it converged, diverged or failed its check
    detail: str = ""


@dataclass(frozen=True)
class Member:
    """One member of a batch: what may differ between the members trained together."""

    optimizer: Optimizer  # steps this member's parameters only
    epochs: int
    write: Callable[[pd.DataFrame], None]  # takes each chunk of this member's history
    zero_grad: bool = True  # false keeps the last gradient, so backward() adds to it (seed 001)
    tol: float | None = None  # stop.tol
    check_grad: float | None = None  # the gradient check's tolerance; None: no check
    schedule: Schedule | None = None  # steps this member's lr after each epoch; None: constant
    patience: int | None = None  # stop.patience (needs validation points)
    # A search's trial: given each chunk's last epoch and loss, True stops the member there.
    report: Callable[[int, float], bool] | None = None
    skip: Outcome | None = None  # ends before its first epoch (a trial pruned by the maths)


@dataclass
class Watch:
    """What a member's early stops remember from one chunk to the next."""

    last_loss: float = math.nan  # for stop.tol
    best_val: float = math.inf  # for stop.patience: the lowest val_loss so far ...
    since: int = 0  # ... and the epochs since it


def history_columns(
    names: tuple[str, ...],
    check_grad: bool = False,
    lr: bool = False,
    val: bool = False,
    minibatch: bool = False,
    steps: int = 0,
) -> list[str]:
    """A member's columns: val_loss with validation points, lr when it has a schedule,
    train_loss_mean with mini-batches, grad_check when it checks; then, when steps are
    logged, each of the epoch's `steps` steps' loss and parameters (split_steps)."""
    columns = ["epoch", "loss", *(["val_loss"] if val else []), *(["lr"] if lr else [])]
    columns += [*names, *(f"grad_{n}" for n in names)]
    columns += ["train_loss_mean"] if minibatch else []
    columns += ["grad_check"] if check_grad else []
    return columns + _step_columns(names, steps)


def _step_columns(names: tuple[str, ...], steps: int) -> list[str]:
    return [f"step{s}_{c}" for s in range(steps) for c in ("loss", *names)]


def split_steps(
    chunk: pd.DataFrame, names: tuple[str, ...], steps: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A chunk with logged steps as (the epochs' table, the steps' table): one row per
    step - its global number, its epoch, its batch's loss and the parameters it was
    computed at."""
    columns = _step_columns(names, steps)
    values = chunk[columns].to_numpy().reshape(len(chunk) * steps, 1 + len(names))
    epochs = np.repeat(chunk["epoch"].to_numpy(), steps)
    table = pd.DataFrame(values, columns=["step_loss", *names])
    table.insert(0, "epoch", epochs)
    table.insert(0, "step", epochs * steps + np.tile(np.arange(steps), len(chunk)))
    return chunk.drop(columns=columns), table


def train(
    model: Linear,
    loss_fn: Loss,
    members: list[Member],
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 1000,
    stop: threading.Event | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    batches: MiniBatches | None = None,
) -> list[Outcome]:
    """Run the epochs, hand each member's history to its `write` every `chunk` epochs (and
    at its end), say how each member ended. x: [features, points]; y: [points].

    Row k holds epoch k's loss, the parameters that loss was computed at (before the
    step, as seed 002 prints them) and the gradient the step then used; with a schedule,
    also the lr that step used (a host float, kept beside the device rows).

    With validation points `val` (x, y), column val_loss holds each epoch's loss on them,
    at the same parameters as `loss`.

    With mini-batches (`batches`), an epoch is one step per batch; `loss` stays the loss
    on the whole data at the parameters the epoch started from (so runs with different
    batch sizes compare on one axis), the gradient is the last step's, and column
    train_loss_mean holds the mean of the epoch's batch losses. Logged steps ride along
    as columns of their epoch's row, so whatever keeps or drops an epoch keeps or drops
    its steps (split_steps takes them apart).

    With `check_grad` (a tolerance), column grad_check holds each epoch's largest
    relative difference between autograd's gradient and the analytic one,
    2/N sum (y_hat - y) * x_i for each weight and 2/N sum (y_hat - y) for b, computed on
    the device.

    A member ends early, after writing every row it keeps: at its first non-finite row
    (diverged), at its first grad_check above its tolerance, once its loss changes by
    less than its `tol` (converged), once its val_loss has not improved for `patience`
    epochs (stalled), or, like every member, at the epoch boundary after
    `stop` is set. All but the last are found on the host copy of each chunk, so they
    cost no extra sync; the epochs a chunk ran past a member's end are undone by
    restoring its parameters from the history. On Ctrl-C the rows recorded and not yet
    written are written first.

    A search's trial reports the last loss of each chunk it survives (Member.report), so
    a trial reports once a chunk: its pruner may end it there (pruned). A member with a
    `skip` outcome never trains.
    """
    names = model.names()
    checking = any(m.check_grad is not None for m in members)
    steps = batches.steps if batches is not None and batches.log else 0
    columns = history_columns(names, checking, val=val is not None, minibatch=bool(batches),
                              steps=steps)  # fmt: skip
    outcomes: list[Outcome | None] = [m.skip for m in members]
    active = dict.fromkeys(j for j, m in enumerate(members) if m.skip is None)  # in order
    if not active:
        return outcomes  # type: ignore[return-value]
    longest = max(members[j].epochs for j in active)
    length = min(chunk, longest)  # of a chunk
    # [epoch in chunk, member, column]: one small device-side kernel fills an epoch's slot.
    rows = torch.empty((length, len(members), len(columns) - 1), dtype=x.dtype, device=x.device)
    slots = rows.unbind(0)
    watches = [Watch() for _ in members]
    first, recorded = 0, 0  # epoch of rows[0]; rows filled since
    lrs: list[list[float]] = [[] for _ in members]  # scheduled members' lr, per row
    ends = {members[j].epochs - 1 for j in active}  # a chunk is cut where a member ends
    if val is not None:
        val = (val[0], val[1].expand(len(members), -1))
    epochs = _Epochs(model, loss_fn, members, active, x, y.expand(len(members), -1), val,
                     batches, checking)  # fmt: skip
    try:
        for epoch in range(longest):
            if stop is not None and stop.is_set():  # a cheap flag, no host sync
                _hand_over(rows[:recorded], first, columns, members, active, lrs)
                for j in active:
                    outcomes[j] = Outcome(How.interrupted, epoch)
                return outcomes  # type: ignore[return-value]
            epochs.run(slots[recorded])
            recorded += 1
            for j, schedule in epochs.schedules:
                lrs[j].append(schedule.lr)  # the lr this step used
                schedule.step()  # once per epoch, after the optimizer (as torch wants)
            # Chunks end at multiples of their length, whatever ended before: a search's
            # trials report at the same epochs in any batch (runner/search.py).
            if (epoch + 1) % length == 0 or epoch in ends:
                # A member's last chunk brings the final parameters along: one sync, not two.
                final = torch.cat([model.stacked(n).detach() for n in names], dim=-1)
                values, finals = _to_host(rows[:recorded], final)
                start, first, recorded = first, epoch + 1, 0  # handed over below, come what may
                handed: set[int] = set()
                for j in list(active):
                    if stop is not None and stop.is_set():
                        # Handing a batch's chunk over waits on the store (runner/tracking.py
                        # bounds its backlog): a stop meanwhile keeps the rest of this chunk
                        # from every sink of the members not yet handed it, so that the stop
                        # takes seconds and each CSV still equals its MLflow history.
                        for k in active:
                            outcomes[k] = Outcome(How.interrupted, first if k in handed else start)
                        return outcomes  # type: ignore[return-value]
                    handed.add(j)
                    frame = _frame(values[:, j], start, columns, members[j], lrs[j])
                    lrs[j] = []
                    params = dict(zip(names, model.member(j), strict=True))
                    try:
                        outcome = _after_chunk(frame, finals[j], epoch, members[j],
                                               watches[j], params)  # fmt: skip
                    except Abandon as err:
                        outcome = Outcome(How.abandoned, start, epoch, str(err))
                    if outcome is not None:
                        outcomes[j] = outcome
                        del active[j]
                if not active:
                    break
                epochs.keep(active)
    except KeyboardInterrupt:
        _hand_over(rows[:recorded], first, columns, members, active, lrs)  # unfinished chunk
        raise
    return outcomes  # type: ignore[return-value]


@dataclass
class _Epochs:
    """What every epoch of a batch works with, and one epoch's steps."""

    model: Linear
    loss_fn: Loss
    members: list[Member]
    active: dict  # the members still training
    x: torch.Tensor  # [features, points]
    y: torch.Tensor  # [members, points]: a view, every member fits the same points
    val: tuple[torch.Tensor, torch.Tensor] | None  # held-out (x, y [members, points])
    batches: MiniBatches | None
    checking: bool  # some member checks its gradient

    def __post_init__(self) -> None:
        self.names = self.model.names()
        # The feature rows as a tuple: indexing a tensor costs microseconds every epoch.
        self.features = tuple(self.x)
        self.val_features = tuple(self.val[0]) if self.val is not None else ()
        self.ones = torch.ones(len(self.members), 1, dtype=self.x.dtype, device=self.x.device)
        self.keep(self.active)
        # One epoch; fills its row of the history ([members, columns]).
        self.run = self._full_batch if self.batches is None else self._minibatches

    def keep(self, active: dict) -> None:
        """Train only the `active` members from now on. Their optimizers and schedules are
        listed once here, not looked up every epoch."""
        self.active = active
        members = [self.members[j] for j in active]
        self.zeroing = [m.optimizer for m in members if m.zero_grad]
        self.optimizers = [m.optimizer for m in members]
        self.schedules = [(j, self.members[j].schedule) for j in active
                          if self.members[j].schedule is not None]  # fmt: skip

    def _full_batch(self, slot: torch.Tensor) -> None:
        """One step on the whole data."""
        y_hat, loss = self._backward(self.features, self.y)
        with torch.no_grad():  # every value a column [members, 1]: one cat fills the row
            row = [loss, *self._val_loss(), *self.model.values.values(), *self.model.grads()]
            if self.checking:
                row.append(_grad_error(y_hat - self.y, self.features, row[-len(self.names) :]))
            torch.cat(row, dim=-1, out=slot)  # a copy of the parameters, before step()
        self._step()

    def _minibatches(self, slot: torch.Tensor) -> None:
        """One step per mini-batch; the row starts at the parameters the epoch starts from."""
        with torch.no_grad():
            head = [self.loss_fn(self.model(self.features), self.y), *self._val_loss()]
            head += self.model.values.values()
            slot[:, : len(head)] = torch.cat(head, dim=-1)  # a copy: the steps change them
        total = torch.zeros_like(self.ones)
        width = 1 + len(self.names)  # a logged step: its loss and parameters
        logged = slot[:, slot.shape[1] - self.batches.steps * width :] if self.batches.log else None
        for s, points in enumerate(self.batches.epoch()):
            # [size] in data order; [members, size] shuffled (each member its own order)
            xb = self.x[:, points]
            yb = self.y[:, points] if isinstance(points, slice) else self.y.gather(1, points)
            y_hat, loss = self._backward(xb, yb)
            with torch.no_grad():
                total += loss
                if logged is not None:  # before the step changes the parameters
                    step = [loss, *self.model.values.values()]
                    logged[:, s * width : (s + 1) * width] = torch.cat(step, dim=-1)
            self._step()
        with torch.no_grad():
            tail = [*self.model.grads(), total / self.batches.steps]  # the last step's gradient
            if self.checking:
                tail.append(_grad_error(y_hat - yb, xb, tail[: len(self.names)]))
            slot[:, len(head) : len(head) + len(tail)] = torch.cat(tail, dim=-1)

    def _backward(self, x: Features, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_hat = self.model(x)
        loss = self.loss_fn(y_hat, y)  # one loss per member
        for optimizer in self.zeroing:
            optimizer.zero_grad()
        # Each member's loss depends on its own parameters only: backward from a 1 per member
        # (the gradient of their sum) gives every member its own gradient.
        loss.backward(self.ones)
        return y_hat, loss

    def _step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def _val_loss(self) -> list[torch.Tensor]:
        """The loss on the validation points, for a row (under no_grad)."""
        if self.val is None:
            return []
        return [self.loss_fn(self.model(self.val_features), self.val[1])]


def _after_chunk(
    frame: pd.DataFrame,
    final: np.ndarray,
    epoch: int,
    member: Member,
    watch: Watch,
    params: dict[str, torch.nn.Parameter],
) -> Outcome | None:
    """Hand a member its chunk; its Outcome if the chunk ended it, else None."""
    ending = _first_stop(frame, watch, member)
    if ending is not None:
        return _end_early(frame, *ending, params, member.write)
    member.write(frame)
    if epoch == member.epochs - 1:
        if not np.isfinite(final).all():
            return Outcome(How.diverged, member.epochs, member.epochs, "the last step overflowed")
        return Outcome(How.finished, member.epochs)
    if member.report is not None and member.report(epoch, float(frame["loss"].iloc[-1])):
        return Outcome(How.pruned, epoch + 1, epoch)
    return None


def _grad_error(residual: torch.Tensor, x: Features, grads: list) -> torch.Tensor:
    """Each member's largest |autograd - analytic| / (1 + |analytic|), [members, 1]."""
    analytic = [2 * (residual * feature).mean(dim=-1, keepdim=True) for feature in x]
    analytic.append(2 * residual.mean(dim=-1, keepdim=True))  # b's, when there is a b
    analytic = analytic[: len(grads)]
    errors = [(g - a).abs() / (1 + a.abs()) for g, a in zip(grads, analytic, strict=True)]
    return torch.stack(errors).amax(dim=0)


def _first_stop(frame: pd.DataFrame, watch: Watch, member: Member) -> tuple[int, How] | None:
    """The first row that diverged, failed the gradient check, converged or stalled, and
    which; `watch` moves on to the end of the chunk."""
    stops: list[tuple[int, How]] = []
    finite = np.isfinite(frame.to_numpy()).all(axis=1)
    if not finite.all():
        stops.append((int(np.argmin(finite)), How.diverged))
    if member.check_grad is not None:
        over = np.flatnonzero(frame["grad_check"].to_numpy() > member.check_grad)
        if over.size:
            stops.append((int(over[0]), How.grad_check_failed))
    losses = frame["loss"].to_numpy()
    if member.tol is not None:
        change = np.abs(np.diff(losses, prepend=watch.last_loss))
        calm = np.flatnonzero(change < member.tol)
        if calm.size:
            stops.append((int(calm[0]), How.converged))
    watch.last_loss = losses[-1] if len(losses) else watch.last_loss
    if member.patience is not None:
        for i, value in enumerate(frame["val_loss"].to_numpy()):
            watch.best_val, watch.since = (
                (value, 0) if value < watch.best_val else (watch.best_val, watch.since + 1)
            )
            if watch.since >= member.patience:
                stops.append((i, How.stalled))
                break
    return min(stops, key=lambda stop: stop[0]) if stops else None


def _end_early(
    frame: pd.DataFrame,
    stop: int,
    how: How,
    params: dict[str, torch.nn.Parameter],
    write: Callable[[pd.DataFrame], None],
) -> Outcome:
    """Write the rows the member keeps, and leave its parameters as its stopping epoch did."""
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
    if how in (How.converged, How.stalled) and stop + 1 < len(frame):
        # The parameters after step `stop` are the ones row stop + 1 was computed at.
        with torch.no_grad():
            for name, p in params.items():
                p.fill_(float(frame[name].iloc[stop + 1]))
    return Outcome(how, epochs, epoch)


def _hand_over(
    rows: torch.Tensor,
    first: int,
    columns: list[str],
    members: list[Member],
    active: dict,
    lrs: list[list[float]],
) -> None:
    """On a stop: give each training member the rows recorded and not yet written."""
    if len(rows):
        values = _to_host(rows)[0]
        for j in active:
            with contextlib.suppress(Abandon):  # stopping anyway: its sinks say what they kept
                members[j].write(_frame(values[:, j], first, columns, members[j], lrs[j]))


def _to_host(
    rows: torch.Tensor, final: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The chunk [epochs, members, columns] and the final parameters, on the host."""
    both = rows.reshape(-1) if final is None else torch.cat([rows.reshape(-1), final.reshape(-1)])
    values = both.cpu().double().numpy()  # the one host sync of this chunk
    chunk = values[: rows.numel()].reshape(rows.shape)
    return chunk, None if final is None else values[rows.numel() :].reshape(final.shape)


def _frame(
    values: np.ndarray, first: int, columns: list[str], member: Member, lrs: list[float]
) -> pd.DataFrame:
    """A member's rows of a chunk as its table: with its lr if it has a schedule, without
    grad_check if it has no check."""
    frame = pd.DataFrame(values, columns=columns[1:])
    if member.check_grad is None and "grad_check" in frame:
        frame = frame.drop(columns="grad_check")
    if member.schedule is not None:  # (a row whose step a Ctrl-C cut short: the lr it had)
        lr = [*lrs, *[member.schedule.lr] * (len(frame) - len(lrs))]
        frame.insert(1 + ("val_loss" in frame), "lr", lr)  # after loss (and val_loss)
    frame.insert(0, "epoch", range(first, first + len(frame)))
    return frame
