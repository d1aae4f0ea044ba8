"""`python -m runner.cleanup`: end runs left RUNNING by a process that is gone.

A hard kill (SIGKILL, power loss) gives a run no chance to end itself. Every run
records which process wrote it (`runner.host`, `runner.pid`, `runner.pid_start`); a
RUNNING run whose process no longer exists on this host is marked KILLED.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runner.processes import is_orphaned
from runner.store import default_tracking_uri, missing_store_error, redact

PAGE = 1000  # runs per request; MLflow's pager follows the page tokens


def running_runs(client: Any) -> list[Any]:
    """Every RUNNING run of every experiment in the store."""
    from mlflow.utils import get_results_from_paginated_fn

    experiments = get_results_from_paginated_fn(
        lambda size, token: client.search_experiments(max_results=size, page_token=token), PAGE
    )
    ids = [e.experiment_id for e in experiments]
    return get_results_from_paginated_fn(
        lambda size, token: client.search_runs(
            ids, "attributes.status = 'RUNNING'", max_results=size, page_token=token
        ),
        PAGE,
    )


def stale_runs(client: Any) -> tuple[list[Any], int]:
    """RUNNING runs whose process is gone, and how many RUNNING runs could not be judged."""
    verdicts = [(run, is_orphaned(run.data.tags)) for run in running_runs(client)]
    return [run for run, gone in verdicts if gone], sum(gone is None for _, gone in verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.cleanup", description=__doc__)
    parser.add_argument("--tracking-uri", help="default: sqlite:///<this directory>/mlflow.db")
    parser.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    args = parser.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if missing := missing_store_error(uri):
        print(f"runner.cleanup: error: {missing}", file=sys.stderr)
        return 2

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    stale, unknown = stale_runs(client)
    for run in stale:
        if not args.dry_run:
            client.set_tag(run.info.run_id, "runner.cleaned", "process gone")
            client.set_terminated(run.info.run_id, "KILLED")
        print(f"{'would mark' if args.dry_run else 'marked'} KILLED: {run.info.run_id} "
              f"({run.info.run_name}, pid {run.data.tags['runner.pid']})")  # fmt: skip
    print(f"runner.cleanup: {len(stale)} stale run(s) in {redact(uri)}; "
          f"{unknown} RUNNING run(s) of other hosts or unknown processes left alone")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
