"""MLflow sink: one run with params, tags, per-epoch metrics, final metrics and artifacts.

The store work happens in the tracking process (runner/tracking_process.py), which this
module starts once per process and talks to through two pipes. Opening and ending a run
wait for its answer; a chunk of metrics is sent and the loop goes on, so the store holds
up training only when it falls 64 chunks behind. MLflow itself is never imported here.

Runs are addressed by id, never through MLflow's fluent "active run", so the jobs of a
basic-launcher sweep share one tracking process without colliding.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import runner
from runner.frames import FrameReader, write_frame
from runner.signals import interrupts_deferred
from runner.store import TrackingUnavailable, redact

if TYPE_CHECKING:
    import pandas as pd


class TrackingError(RuntimeError):
    """The tracking process could not do what was asked; the message is one line."""


class TrackingProcess:
    """The runner's end of the two pipes to `python -m runner.tracking_process`."""

    def __init__(self) -> None:
        # The child must find this very package, installed or not.
        path = [str(Path(runner.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner.tracking_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, path))},
        )
        self.answers = FrameReader(self.process.stdout.fileno())
        self.failures: dict[str, str] = {}  # run id -> why a metric chunk failed, told unasked
        self.ended: set[str] = set()  # runs ended without waiting: nobody asks about them
        self.requests = 0
        self.used = False  # sent anything at all
        self.lock = threading.Lock()

    def send(self, command: str, **kwargs: Any) -> None:
        """Hand over a command that needs no answer (a chunk of metrics)."""
        with self.lock:
            self._send(None, command, kwargs)

    def call(self, command: str, **kwargs: Any) -> Any:
        """Run a command and wait for its answer; raise TrackingError if it failed."""
        with self.lock:
            self.requests += 1
            self._send(self.requests, command, kwargs)
            while True:
                answer = self.answers.read()  # Ctrl-C may interrupt this: the frame stays
                if answer is None:
                    raise TrackingError("the tracking process ended unexpectedly")
                request, ok, value = answer
                if request is None:
                    self._note_failure(value)
                elif request == self.requests:
                    if not ok:
                        raise TrackingError(value)
                    return value
                # else: the answer to a call that an interrupt abandoned

    def check(self, run_id: str) -> None:
        """Raise, without waiting, if a metric chunk of this run sent earlier has failed."""
        with self.lock:
            while self.answers.has_data():
                answer = self.answers.read()
                if answer is None:
                    raise TrackingError("the tracking process ended unexpectedly")
                self._note_failure(answer[2])
        if run_id in self.failures:
            raise TrackingError(self.failures[run_id])

    def _note_failure(self, value: tuple[str, str]) -> None:
        run_id, why = value
        if run_id in self.ended:
            print(f"runner: error: MLflow could not end run {run_id}: {why}", file=sys.stderr)
        self.failures.setdefault(run_id, why)

    def _send(self, request: int | None, command: str, kwargs: dict[str, Any]) -> None:
        self.used = True
        try:
            with interrupts_deferred():  # a frame goes over whole: the other end stays in step
                write_frame(self.process.stdin.fileno(), (request, command, kwargs))
        except BrokenPipeError:
            raise TrackingError("the tracking process ended unexpectedly") from None

    def close(self) -> None:
        """Let the tracking process finish what it was sent, and end, without waiting:
        every run was ended by a call that did wait. One that was never used (a config
        error) is stopped at once: it has touched nothing, and may still be importing."""
        if not self.used:
            self.process.kill()
        with contextlib.suppress(OSError):
            self.process.stdin.close()


@functools.cache  # one per process: the jobs of a sweep in this process share it
def tracking_process() -> TrackingProcess:
    """Start the tracking process (it begins importing MLflow at once), or get it."""
    child = TrackingProcess()
    atexit.register(child.close)
    return child


class MlflowSink:
    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        await_finish: bool = True,  # False: a sweep's job, whose sweep waits for the store
    ) -> None:
        self.tracking_uri = tracking_uri
        self.await_finish = await_finish
        self.child = tracking_process()
        try:
            self.run_id = self.child.call(
                "open_run",
                tracking_uri=tracking_uri,
                experiment=experiment,
                run_name=run_name,
                params={k: str(v) for k, v in params.items()},
                tags=tags,
            )
        except TrackingError as err:
            reason = str(err)[:300]
            raise TrackingUnavailable(
                f"cannot open an MLflow run at {redact(tracking_uri)}: {reason}"
            ) from None

    def write(self, chunk: pd.DataFrame) -> None:
        """Send a chunk of epochs to the store; raise if an earlier chunk failed."""
        try:
            self.child.check(self.run_id)
        except TrackingError:
            self.child.send("end_run", run_id=self.run_id, status="FAILED")  # if it still can
            raise
        columns = {name: chunk[name].to_numpy() for name in chunk.columns[1:]}
        epochs = chunk["epoch"].to_numpy()
        self.child.send("metrics", run_id=self.run_id, epochs=epochs, columns=columns)

    def finish(
        self, final: dict[str, float], config_yaml: str, files: list[Path], tags: dict[str, str]
    ) -> None:
        """Final metrics, tags and artifacts, then FINISHED (once every chunk is stored)."""
        self._end("FINISHED", final, tags, config_yaml, files, wait=self.await_finish)

    def failed(self, tags: dict[str, str], config_yaml: str, files: list[Path]) -> None:
        """FAILED, tagged with why (e.g. diverged_at_epoch); no final metrics, which could
        be inf or NaN."""
        self._end("FAILED", {}, tags, config_yaml, files)

    def abort(self, status: str) -> None:
        """End the run as FAILED or KILLED, with every chunk already handed over; never
        leave it RUNNING."""
        self._end(status, {}, {}, None, [])

    def _end(
        self,
        status: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        config_yaml: str | None,
        files: list[Path],
        wait: bool = True,
    ) -> None:
        command = dict(run_id=self.run_id, status=status, metrics=metrics, tags=tags,
                       config_yaml=config_yaml, files=[str(f) for f in files])  # fmt: skip
        if wait:
            self.child.call("end_run", **command)
        else:  # the next job trains meanwhile; a failure is printed when it is noticed
            self.child.ended.add(self.run_id)
            self.child.send("end_run", **command)
