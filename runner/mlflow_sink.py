"""The MLflow sink: one MLflow run - a training run, or a sweep's parent run.

The store's work happens in the tracking process (runner/tracking.py). Opening waits for
the run's id; a chunk of metrics is handed over and the loop trains on; closing waits
until the store holds every chunk, then ends the run. A store that fails mid-run costs
the run its MLflow record, never its CSV: the sink says so in one line, ends the run
FAILED at once (through a fresh tracking process if the old one died), and drops the rest;
a run the store cannot end now is ended as soon as it answers again.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import Future

import pandas as pd

from runner import tracking
from runner.tracking import DataSpec, Ending, RunSpec, TrackingError

log = logging.getLogger("runner")


class StoreUnavailable(RuntimeError):
    """The MLflow run could not be opened; the message is one line, password-free."""


def timeout(uri: str) -> float:
    """How long a call may wait: a server that hangs costs seconds; a local store may be
    busy creating its tables or with another writer (less once a stop came: Tracker.wait)."""
    return 12.0 if uri.startswith(("http://", "https://")) else 120.0


# Runs whose end the store could not take: ended as soon as it answers again.
_unended: list[tuple[str, str, str]] = []


class MlflowSink:
    def __init__(
        self, spec: RunSpec, lane: int = 0, every: int = 1, data: DataSpec | None = None
    ) -> None:
        self.spec = spec
        self.data = data  # logged as the run's input once it is open
        self.lane = lane  # which tracking process stores this run (runner/tracking.py)
        self.every = every  # mlflow.log_every: every N-th epoch, and the last
        self.last_row: pd.DataFrame | None = None  # the newest row, if not sent: maybe the last
        self.uri = spec.tracking_uri
        self.run_id: str | None = None
        self.sent: list[Future] = []  # metric chunks not yet known to be stored
        self.error: str | None = None  # why the store failed mid-run
        self.ended = False
        self.opening: Future | None = None
        self.ending: Future | None = None

    def request(self) -> None:
        """Ask the store for the run now; open() takes its id (a batch asks for all at once)."""
        self.opening = tracking.tracker(self.lane).call_async(tracking.open_run, self.spec)

    def open(self) -> None:
        if self.opening is None:
            self.request()
        try:
            self.run_id = tracking.tracker(self.lane).wait(self.opening, timeout(self.uri))
        except TrackingError as err:
            why = f"cannot open an MLflow run at {self.uri}: {err}"
            raise StoreUnavailable(why) from None
        _end_the_unended()
        if self.data is not None:  # stored while the loop trains, like a chunk of metrics
            tracker = tracking.tracker(self.lane)
            data = self.data
            if data.key in tracker.datasets:  # sent whole already: the process has it
                data = dataclasses.replace(data, columns=None)
            tracker.datasets.add(data.key)
            self.sent.append(tracker.call_async(tracking.log_dataset, self.uri, self.run_id, data))

    def write(self, chunk: pd.DataFrame) -> None:
        """Hand the chunk's every N-th epoch to the store; an earlier chunk's failure is
        noticed here."""
        if self.every > 1:
            last = chunk.iloc[-1:]
            chunk = chunk[chunk["epoch"].to_numpy() % self.every == 0]
            self.last_row = None if int(last["epoch"].iloc[0]) % self.every == 0 else last
        self._send(chunk)

    def write_steps(self, steps: pd.DataFrame) -> None:
        """log_steps: each step's batch loss as metric step_loss, step = the global step."""
        self._send(steps, "step", ["step_loss"])

    def _send(self, chunk: pd.DataFrame, at: str = "epoch", names: list[str] | None = None) -> None:
        self._collect(wait=False)
        if self.error or chunk.empty:
            return
        names = names or [name for name in chunk.columns if name != at]
        columns = {name: chunk[name].to_numpy() for name in names}
        steps = chunk[at].to_numpy()
        tracker = tracking.tracker(self.lane)
        self.sent.append(
            tracker.send_metrics(self.uri, self.run_id, steps, columns, timeout(self.uri))
        )

    def close(self, ending: Ending) -> None:
        """End the run with `ending` once the store holds every chunk, and wait for it."""
        self.finish(ending)
        self.settle()

    def finish(self, ending: Ending) -> None:
        """Hand the ending over: the store takes it after every chunk (its calls are answered
        in order), and ends the run FAILED instead if one of them failed."""
        if self.last_row is not None:  # the run's last epoch, whatever N is
            self._send(self.last_row)
            self.last_row = None
        self._collect(wait=False)
        if not self.ended:
            self.ended = True
            tracker = tracking.tracker(self.lane)
            self.ending = tracker.call_async(tracking.end_run, self.uri, self.run_id, ending)

    def settle(self) -> None:
        """Wait until the store has taken every chunk and the ending."""
        self._collect(wait=True)
        if self.ending is not None and not self.error:
            try:
                tracking.tracker(self.lane).wait(self.ending, timeout(self.uri))
            except TrackingError as err:
                self._fail(str(err))  # (which leaves the run to be ended when it answers)

    def _end(self, ending: Ending) -> None:
        self.ended = True
        try:
            tracking.tracker(self.lane).call(tracking.end_run, self.uri, self.run_id, ending,
                                    timeout=timeout(self.uri))  # fmt: skip
        except TrackingError as err:
            self._fail(str(err))
            _unended.append((self.uri, self.run_id, "FAILED"))

    def _collect(self, wait: bool) -> None:
        """Note which chunks the store has taken, and the first that failed."""
        pending = []
        for future in self.sent:
            if wait and not future.done() and not self.error:
                try:
                    tracking.tracker(self.lane).wait(future, timeout(self.uri))
                except TrackingError as err:
                    self._fail(str(err))
            if not future.done():
                pending.append(future)
            elif future.exception() is not None:
                self._fail(str(future.exception()))
        self.sent = pending if not self.error else []

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
            log.error(
                f"runner: error: MLflow failed ({why[:300]}); run {self.run_id} is ended FAILED, "
                "the CSV keeps every epoch"
            )
            if not self.ended:  # no half-logged run left RUNNING: FAILED now, with why
                self._end(Ending("FAILED", tags={"runner.tracking_error": why[:500]}))
            elif self.ending is not None and (
                not self.ending.done() or self.ending.exception() is not None
            ):
                # Its ending was handed over and not taken (a store that hung past its
                # deadline, and the tracking process let go): ended once the store answers.
                _unended.append((self.uri, self.run_id, "FAILED"))


def _end_the_unended() -> None:
    """The store answers again: end the runs it could not end before."""
    while _unended:
        uri, run_id, status = _unended.pop()
        try:
            tracking.tracker().call(tracking.end_run, uri, run_id, Ending(status),
                                    timeout=timeout(uri))  # fmt: skip
        except TrackingError:
            _unended.append((uri, run_id, status))
            return


def end_the_unended(retry: bool = True) -> None:
    """At the end of a sweep or a single run: one more try for runs the store could not end
    (none once a stop came: it has waited its deadline), and a line for each left RUNNING,
    so that the last line agrees with the store."""
    if _unended and retry:
        _end_the_unended()
    while _unended:
        _, run_id, _ = _unended.pop()
        log.error(f"runner: error: MLflow run {run_id} could not be ended (the store did not "
                  "answer): it stays RUNNING until `python -m runner.cleanup` ends it")  # fmt: skip
