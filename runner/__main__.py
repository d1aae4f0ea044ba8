"""`python -m runner`. A Ctrl-C before the runner has set its own signal handlers (while it
imports and checks the command line) ends it in one line too, with nothing run."""

import sys

if __name__ == "__main__":  # a spawned worker imports this module too, as __mp_main__
    try:
        from runner.cli import main

        main()
    except KeyboardInterrupt:
        print("runner: stopped by SIGINT before it started: nothing was run", file=sys.stderr)
        raise SystemExit(130) from None
