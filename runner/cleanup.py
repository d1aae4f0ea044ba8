"""`python -m runner.cleanup`: end runs left RUNNING by a process that is gone.

A hard kill (SIGKILL, power loss) gives a run no chance to end itself. Every run
records which process wrote it (`runner.host`, `runner.pid`, `runner.pid_start`); a
RUNNING run whose process no longer exists on this host is marked KILLED.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

from runner.store import default_tracking_uri, missing_store_error, redact


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart); None
    when it is gone or a zombie (killed, not yet reaped: it writes nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # counted after the command name
    return None if fields[0] == "Z" else fields[19]  # state (field 3), starttime (field 22)


def process_tags() -> dict[str, str]:
    """Tags that identify the writing process, for `runner.cleanup` to check later."""
    pid = os.getpid()
    return {"runner.host": socket.gethostname(), "runner.pid": str(pid),
            "runner.pid_start": _start_time(pid) or ""}  # fmt: skip


def is_orphaned(tags: dict[str, str]) -> bool | None:
    """True when the run's process is gone, False when it lives, None when unknowable here."""
    if tags.get("runner.host") != socket.gethostname() or "runner.pid" not in tags:
        return None
    started = _start_time(int(tags["runner.pid"]))
    return started is None or started != tags.get("runner.pid_start")


def stale_runs(client: Any) -> tuple[list[Any], int]:
    """RUNNING runs whose process is gone, and how many RUNNING runs could not be judged."""
    from runner.compare import fetch_runs

    experiments = [e.experiment_id for e in client.search_experiments()]
    running = fetch_runs(client, experiments, "attributes.status = 'RUNNING'")
    verdicts = [(run, is_orphaned(run.data.tags)) for run in running]
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
