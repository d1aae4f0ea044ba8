"""Ctrl-C, SIGTERM and SIGHUP (a closed terminal): one way to stop, whatever the signal.

A training loop stops at the next epoch boundary when `stop` is set, so the chunk in hand
reaches every sink whole and the run ends KILLED with the CSV and MLflow equal. Where no
loop is listening (between the jobs of a sweep, waiting on a parallel launcher) the
signal raises Stop, which unwinds like Ctrl-C. A single run notes a signal from its start
until its loop listens: one noted before the run has written anything ends it with nothing
run, one noted after its MLflow run opened stops its loop at epoch 0 (KILLED). The store
holds at most about a second of work back (runner/tracking.py), so ending the run KILLED
takes seconds even on a long run.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stop(KeyboardInterrupt):
    """Raised by a stop signal; exits with 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class NotStarted(Stop):
    """A stop noted while a run was set up, honored before it wrote anything."""


class Stopper:
    """The process's stop state, set by the first signal."""

    def __init__(self) -> None:
        self.stop = threading.Event()  # cheap to poll once per epoch
        self.signum = 0
        self.listening: str | None = None  # while a loop polls `stop`: what it will keep
        self.said = False  # whether a loop has said what the stop keeps
        self.quiet = False  # a parallel launcher's worker: the main process speaks for it
        self.forward: Callable[[int], None] | None = None  # passes the first signal on

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            doing = "ending the run as KILLED" if self.said else "stopping"  # (before a loop)
            self._print(f"runner: {name} again: still {doing} (the store takes seconds at "
                        "most; kill -9 would leave a run RUNNING)")  # fmt: skip
        else:
            self.signum = signum
            self.stop.set()
            if self.forward is not None:
                self.forward(signum)
            if self.listening:
                self._say(name, self.listening)
        # A worker never raises: an exception while it hands its result back breaks the
        # launcher's pool; its stop is polled (set-up, the loop, the store's waits) instead.
        if self.listening is None and not self.quiet:
            raise Stop(signum)

    def _say(self, name: str, what: str) -> None:
        self._print(f"runner: stopping on {name}: {what}")
        self.said = True

    def _print(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    @contextmanager
    def listening_while(self, what: str) -> Iterator[None]:
        """Signals only set `stop` while the block runs: it polls and stops cleanly (and
        says `what` it keeps; nothing with ""). A signal noted before is said on entry."""
        before, self.listening = self.listening, what
        if what and self.stop.is_set() and not self.said:
            self._say(signal.Signals(self.signum).name, what)
        try:
            yield
        finally:
            self.listening = before


STOPPER = Stopper()  # signals are the process's: one stopper per process


def stopped_before_start(signum: int) -> SystemExit:
    """One line for a stop that came before anything ran, and the shell's exit code."""
    name = signal.Signals(signum).name
    print(f"runner: stopped by {name} before it started: nothing was run", file=sys.stderr)
    return SystemExit(128 + signum)


def install(quiet: bool = False) -> Stopper:
    """Route the stop signals to STOPPER (only the main thread may set handlers); quiet in a
    parallel launcher's worker, whose stop the main process announces."""
    STOPPER.quiet = quiet
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, STOPPER.handle)
    return STOPPER


def to_workers(signum: int) -> None:
    """Pass a stop on to this process's workers (a joblib launcher's): each ends its run
    KILLED with every row stored, as this process's loop would. Its tracking processes
    ignore the signal; SIGHUP goes on as SIGTERM, which the launcher's own helpers ignore."""
    import psutil

    sent = signal.SIGTERM if signum == signal.SIGHUP else signum
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            child.send_signal(sent)
