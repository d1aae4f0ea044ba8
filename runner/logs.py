"""The runner's console lines go through `logging`, so Hydra's job log holds them too.

conf/hydra/job_logging/runner.yaml sends INFO to stdout and WARNING and above to stderr,
each line as written ("runner: ..."), and everything, timestamped, to the job's log file.
Outside a Hydra job (before it, or around a sweep) `console()` does the same without a file.
"""

from __future__ import annotations

import logging
import sys


class BelowWarning(logging.Filter):
    """Lets INFO and DEBUG through: stdout gets those, stderr the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def console() -> None:
    """Root logging as the job's, minus the file: stdout below WARNING, stderr from it."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(BelowWarning())
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[out, err], force=True)
