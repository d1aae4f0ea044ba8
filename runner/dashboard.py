"""`python -m runner.dashboard`: the MLflow UI on this directory's store, on 127.0.0.1 only."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path

from runner.store import default_tracking_uri, missing_store_error, redact

HOST = "127.0.0.1"


def server_command(tracking_uri: str, port: int) -> list[str]:
    """`mlflow server` bound to loopback; artifacts are read where the runs logged them."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [mlflow, "server", "--backend-store-uri", tracking_uri, "--host", HOST,
            "--port", str(port), "--workers", "1"]  # fmt: skip


def port_problem(port: int) -> str | None:
    """Why the server could not listen on HOST:port, or None when it can. Checked before
    the server starts: MLflow's server, finding the port taken, fails after we have
    printed an address that shows whatever else listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server will: a port in TIME_WAIT from an earlier dashboard is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as err:
            return err.strerror or str(err)
    return None


def experiment_id(tracking_uri: str, name: str) -> str | None:
    """The id of the named experiment in the store, or None when it does not exist yet."""
    from mlflow import MlflowClient

    experiment = MlflowClient(tracking_uri).get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def dashboard_url(port: int, experiment: str | None = None) -> str:
    """The UI's address: the experiment's runs table when its id is given (MLflow 3 opens
    its root on a GenAI overview, not on the runs), else the root."""
    root = f"http://{HOST}:{port}"
    return f"{root}/#/experiments/{experiment}/runs" if experiment is not None else root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.dashboard", description=__doc__)
    parser.add_argument(
        "--port", type=int, default=5000, help="0: any free port (the server says which)"
    )
    parser.add_argument("--tracking-uri", help="default: sqlite:///<this directory>/mlflow.db")
    parser.add_argument(
        "--experiment", default="runner", help="experiment to open (default: runner)"
    )
    args = parser.parse_args(argv)

    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if missing := missing_store_error(uri):
        return _fail(missing)
    if taken := port_problem(args.port):
        return _fail(f"port {args.port} on {HOST} is taken ({taken}); pass --port")
    found = experiment_id(uri, args.experiment)
    shown = f"the runs of experiment '{args.experiment}'"
    if found is None:  # a first sweep creates it; the root then lists it
        shown = f"no experiment '{args.experiment}' yet, so the start page"
    where = dashboard_url(args.port, found) if args.port else "the port the server prints below"
    print(f"MLflow dashboard: {where}  "
          f"({shown}; store {redact(uri)}; Ctrl-C stops it)")  # fmt: skip
    sys.stdout.flush()
    command = server_command(uri, args.port)
    os.execv(command[0], command)  # the server takes over this process and its Ctrl-C
    return 0  # reached only where execv is replaced (tests)


def _fail(message: str) -> int:
    print(f"runner.dashboard: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
