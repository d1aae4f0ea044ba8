"""`python -m runner.dashboard`: the MLflow UI on this directory's store, on 127.0.0.1 only."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from runner.store import default_tracking_uri, missing_store_error


def server_command(tracking_uri: str, port: int) -> list[str]:
    """`mlflow server` bound to loopback; artifacts are read where the runs logged them."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [mlflow, "server", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.dashboard", description=__doc__)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--tracking-uri", help="default: sqlite:///<this directory>/mlflow.db")
    args = parser.parse_args(argv)

    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if missing := missing_store_error(uri):
        print(f"runner.dashboard: error: {missing}", file=sys.stderr)
        return 2
    print(f"MLflow dashboard: http://127.0.0.1:{args.port}  (store {uri}; Ctrl-C stops it)")
    sys.stdout.flush()
    command = server_command(uri, args.port)
    os.execv(command[0], command)  # the server takes over this process and its Ctrl-C
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
