"""The runner's console lines go through `logging`, so Hydra's job log holds them too.

conf/hydra/job_logging/runner.yaml sends INFO to stdout and WARNING and above to stderr,
each line as written ("runner: ..."), and everything, timestamped, to the job's log file.
Outside a Hydra job (before it, or around a sweep) `console()` does the same without a file.
"""

from __future__ import annotations

import logging
import os
import sys


class Console(logging.StreamHandler):
    """A console stream whose reader may go away (`python -m runner | head -3`): from then
    on its lines go nowhere, instead of a "Logging error" traceback for each."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            let_go_of(self.stream)
        else:
            super().handleError(record)


def let_go_of(stream: object) -> None:
    """Point the stream's file descriptor at /dev/null (its buffered lines, flushed at exit,
    then go nowhere either), as the Python docs advise for a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())  # type: ignore[attr-defined]
    os.close(devnull)


class BelowWarning(logging.Filter):
    """Lets INFO and DEBUG through: stdout gets those, stderr the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def console() -> None:
    """Root logging as the job's, minus the file: stdout below WARNING, stderr from it."""
    out = Console(sys.stdout)
    out.addFilter(BelowWarning())
    err = Console(sys.stderr)
    err.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[out, err], force=True)
