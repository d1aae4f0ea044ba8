"""Signals: SIGTERM as an exception, so a killed run unwinds like Ctrl-C and ends its
MLflow run; and chunks that are written whole even when a signal arrives meanwhile."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(SystemExit):
    """Raised by SIGTERM; exit code 143 (128 + 15), as a shell reports it."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


def sigterm_raises() -> Any:
    """Install the handler; return the previous one (None where signals cannot be set)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (a thread-based launcher): leave it alone
        return None


def restore_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then act on them as usual.

    Around the write of one chunk this keeps the sinks in step: every sink gets the
    chunk or none does, instead of the CSV holding epochs that MLflow rolled back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            handler = previous[held[0]]
            if callable(handler):
                handler(held[0], None)  # raises KeyboardInterrupt or Terminated
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), held[0])
