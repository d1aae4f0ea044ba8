"""`python -m runner`. A Ctrl-C before the runner has set its own signal handlers (while it
imports and checks the command line) ends it in one line too, with nothing run."""

import signal

from runner.signals import stopped_before_start  # the standard library only: imported at once

if __name__ == "__main__":  # a spawned worker imports this module too, as __mp_main__
    try:
        from runner.cli import main

        main()
    except KeyboardInterrupt:
        raise stopped_before_start(signal.SIGINT) from None
