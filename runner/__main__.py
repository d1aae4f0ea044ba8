"""`python -m runner`. A Ctrl-C before the runner has set its own signal handlers (while it
imports and checks the command line) ends it in one line too, with nothing run."""

import os
import signal
import sys
from pathlib import Path

from runner.signals import stopped_before_start  # the standard library only: imported at once


def _without_the_start_directory() -> None:
    """`python -m` puts the directory it starts in first on the import path, so Hydra's
    plugin discovery would import a `hydra_plugins/` folder found there: code beside the
    command, run even for a refused one. The runner imports nothing from there, unless it is
    the runner's own checkout (`python -P -m runner` leaves it off the path in any case)."""
    here = Path(__file__).resolve().parent.parent
    if sys.path and sys.path[0] in ("", os.getcwd()) and Path(sys.path[0] or ".").resolve() != here:
        del sys.path[0]


if __name__ == "__main__":  # a spawned worker imports this module too, as __mp_main__
    try:
        _without_the_start_directory()
        from runner.cli import main

        main()
    except KeyboardInterrupt:
        raise stopped_before_start(signal.SIGINT) from None
