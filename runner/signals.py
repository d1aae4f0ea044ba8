"""SIGTERM as an exception, so a killed run unwinds like Ctrl-C and ends its MLflow run."""

from __future__ import annotations

import signal
from typing import Any


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
