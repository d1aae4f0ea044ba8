"""`python -m runner.cleanup` in-process on a real SQLite store: RUNNING runs whose writing
process is gone become KILLED; the rest are left alone. And the process identity it reads
(runner/processes.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from runner.cleanup import main
from runner.processes import is_orphaned, process_tags


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_process_tags_name_this_process() -> None:
    tags = process_tags()
    assert tags["runner.host"] == socket.gethostname()
    assert tags["runner.pid"] == str(psutil.Process().pid)
    assert float(tags["runner.pid_start"]) == psutil.Process().create_time()
    assert is_orphaned(tags) is False


def test_is_orphaned(dead_pid: int) -> None:
    here = process_tags()
    assert is_orphaned(here | {"runner.pid": str(dead_pid)}) is True  # gone
    assert is_orphaned(here | {"runner.pid_start": "12345.67"}) is True  # pid reused
    assert is_orphaned(here | {"runner.host": "elsewhere"}) is None
    assert is_orphaned({k: v for k, v in here.items() if k != "runner.pid_start"}) is None
    assert is_orphaned({}) is None
    assert is_orphaned(here | {"runner.pid": "nonsense"}) is None


def test_is_orphaned_sees_a_zombie() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # not reaped until wait()
    process = psutil.Process(child.pid)
    tags = process_tags() | {"runner.pid": str(child.pid)}
    tags["runner.pid_start"] = str(process.create_time())
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # until it exits, not reaping it
    assert process.status() == psutil.STATUS_ZOMBIE
    assert is_orphaned(tags) is True  # ended: it writes nothing any more
    child.wait()
    assert is_orphaned(tags) is True  # reaped: gone


def _running(client: MlflowClient, experiment: str, name: str, tags: dict[str, str]) -> str:
    return client.create_run(experiment, run_name=name, tags=tags).info.run_id


def test_cleanup_kills_only_runs_whose_process_is_gone(
    sqlite_uri: str, dead_pid: int, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = sqlite_uri
    client = MlflowClient(uri)
    here = process_tags()
    ids = {
        "dead": _running(client, "0", "dead", here | {"runner.pid": str(dead_pid),
                                                     "runner.pid_start": "1.5"}),
        "reused": _running(client, "0", "reused", here | {"runner.pid_start": "1.5"}),
        "alive": _running(client, "0", "alive", here),
        "elsewhere": _running(client, "0", "elsewhere", here | {"runner.host": "elsewhere"}),
        "untagged": _running(client, "0", "untagged", {}),
    }  # fmt: skip
    other = client.create_experiment("other")  # every experiment is looked at
    ids["dead elsewhere"] = _running(client, other, "dead 2", here | {"runner.pid_start": "2"})
    finished = _running(client, "0", "finished", here | {"runner.pid": str(dead_pid)})
    client.set_terminated(finished, "FINISHED")

    assert main(["--tracking-uri", uri, "--dry-run"]) == 0
    assert "3 stale run(s)" in capsys.readouterr().out
    assert {client.get_run(i).info.status for i in ids.values()} == {"RUNNING"}

    assert main(["--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    status = {name: client.get_run(i).info.status for name, i in ids.items()}
    assert status == {
        "dead": "KILLED", "reused": "KILLED", "dead elsewhere": "KILLED",
        "alive": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING",
    }  # fmt: skip
    assert client.get_run(finished).info.status == "FINISHED"
    assert client.get_run(ids["dead"]).data.tags["runner.cleaned"] == "process gone"
    assert f"marked KILLED: {ids['dead']} (dead, pid {dead_pid})" in out
    assert "3 stale run(s)" in out and "2 RUNNING run(s) of other hosts" in out


def test_cleanup_without_a_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("runner.cleanup: error: no MLflow store at") and err.count("\n") == 1


@pytest.mark.parametrize("tool", ["cleanup", "compare", "dashboard"])
def test_a_tool_refuses_a_password_in_its_url_at_once(
    tool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one rule for URLs (runner/store.py): no password in a URL, shown or sent."""
    import importlib

    main_of = importlib.import_module(f"runner.{tool}").main
    assert main_of(["--tracking-uri", "http://alice:S3cr3t@127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "S3cr3t" not in err
    assert "MLFLOW_TRACKING_PASSWORD" in err


def test_a_tool_whose_server_does_not_answer_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--tracking-uri", "http://127.0.0.1:9"]) == 2  # nothing listens on port 9
    err = capsys.readouterr().err
    assert err.startswith("runner.cleanup: error: no MLflow server answers at http://127.0.0.1:9")
    assert err.count("\n") == 1
