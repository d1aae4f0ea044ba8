"""Nothing lost, nothing stuck: signals, hard kills, a tracking server that is down or
dies mid-run, and several writers on one SQLite store. Real subprocesses throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from support import run_cli, start_dashboard, start_runner, stop_dashboard, wait_for_rows

LONG = "epochs=20000000"  # minutes of training: only a signal ends it
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _store(home: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


def _runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000)


def _assert_killed_with_every_row(client: MlflowClient, run_id: str, csv: Path) -> int:
    rows = pd.read_csv(csv)
    assert client.get_run(run_id).info.status == "KILLED"
    assert rows["epoch"].tolist() == list(range(len(rows)))  # complete rows, no gap
    logged = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert logged == list(range(len(rows)))  # MLflow holds every epoch the CSV holds
    return len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_ends_a_single_run_as_killed(tmp_path: Path, sig: signal.Signals) -> None:
    process = start_runner(LONG, "hydra.run.dir=out", cwd=tmp_path)
    wait_for_rows(tmp_path / "out" / "metrics.csv", rows=2000)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_CODES[sig], err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("runner: ")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "KILLED"
    rows = _assert_killed_with_every_row(
        _store(tmp_path), result["mlflow_run_id"], tmp_path / "out" / "metrics.csv"
    )
    assert rows == result["epochs_run"] >= 2000


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_ends_a_multirun_and_its_parent_as_killed(
    tmp_path: Path, sig: signal.Signals
) -> None:
    process = start_runner("-m", LONG, "lr=0.01,0.02", "hydra.sweep.dir=sweep", cwd=tmp_path)
    wait_for_rows(tmp_path / "sweep" / "0" / "metrics.csv", rows=2000)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_CODES[sig], err
    assert "Traceback" not in err
    client = _store(tmp_path)
    parent_id = json.loads((tmp_path / "sweep" / "mlflow_parent.json").read_text())["run_id"]
    assert client.get_run(parent_id).info.status == "KILLED"
    result = json.loads((tmp_path / "sweep" / "0" / "result.json").read_text())
    _assert_killed_with_every_row(
        client, result["mlflow_run_id"], tmp_path / "sweep" / "0" / "metrics.csv"
    )
    assert not (tmp_path / "sweep" / "1").exists()  # the sweep stopped with its job
    assert {r.info.status for r in _runs(client)} == {"KILLED"}


@pytest.mark.slow
def test_a_hard_killed_runner_leaves_no_run_running(tmp_path: Path) -> None:
    """SIGKILL of the runner alone: its tracking process sees the pipe close and ends the run."""
    process = start_runner(LONG, "hydra.run.dir=out", cwd=tmp_path)
    wait_for_rows(tmp_path / "out" / "metrics.csv")
    process.kill()
    process.communicate(timeout=60)  # returns once the tracking process has let go of stderr
    (run,) = _runs(_store(tmp_path))
    assert run.info.status == "KILLED"
    assert run.data.tags["runner.pid"] != str(process.pid)  # the tracking process wrote it


@pytest.mark.slow
def test_cleanup_ends_runs_of_a_hard_killed_process_group(tmp_path: Path) -> None:
    process = start_runner(LONG, "hydra.run.dir=out", cwd=tmp_path, new_session=True)
    wait_for_rows(tmp_path / "out" / "metrics.csv")
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its tracking process, no goodbyes
    process.communicate(timeout=30)
    client = _store(tmp_path)
    (stuck,) = _runs(client)
    assert stuck.info.status == "RUNNING"

    done = subprocess.run(
        [sys.executable, "-m", "runner.cleanup"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"marked KILLED: {stuck.info.run_id}" in done.stdout
    assert client.get_run(stuck.info.run_id).info.status == "KILLED"

    live = start_runner(LONG, "hydra.run.dir=out2", cwd=tmp_path)  # a live run stays RUNNING
    try:
        wait_for_rows(tmp_path / "out2" / "metrics.csv")
        again = subprocess.run(
            [sys.executable, "-m", "runner.cleanup"], cwd=tmp_path, capture_output=True, text=True
        )
        assert "runner.cleanup: 0 stale run(s)" in again.stdout
        assert {r.info.status for r in _runs(client)} == {"KILLED", "RUNNING"}
    finally:
        live.send_signal(signal.SIGTERM)
        live.communicate(timeout=60)


@pytest.mark.slow
def test_unreachable_server_can_be_skipped_with_required_false(tmp_path: Path) -> None:
    done = run_cli(
        "mlflow.tracking_uri=http://127.0.0.1:9", "mlflow.required=false", "epochs=5", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "runner: mlflow skipped: http://127.0.0.1:9 does not answer" in done.stdout
    (csv,) = tmp_path.glob("outputs/*/*/metrics.csv")
    assert len(pd.read_csv(csv)) == 5
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_server_dying_mid_run_loses_no_csv_row(tmp_path: Path) -> None:
    url, server = start_dashboard(tmp_path)
    try:
        process = start_runner(
            "epochs=150000", f"mlflow.tracking_uri={url}", "hydra.run.dir=out", cwd=tmp_path
        )
        wait_for_rows(tmp_path / "out" / "metrics.csv", rows=2000)
    finally:
        stop_dashboard(server, signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1
    (line,) = [x for x in err.splitlines() if x.startswith("runner: error: MLflow failed at epoch")]
    assert "the CSV keeps every epoch" in line and "Traceback" not in err
    rows = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert rows["epoch"].tolist() == list(range(150000))
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "FINISHED" and result["tracking_error"]


def _count_points(client: MlflowClient, runs: list) -> int:
    return sum(
        len(client.get_metric_history(r.info.run_id, name))
        for r in runs
        for name in ("loss", "a", "b", "grad_a", "grad_b")
    )


@pytest.mark.slow
def test_two_sweeps_at_once_on_one_new_store_lose_nothing(tmp_path: Path) -> None:
    args = ["-m", "lr=range(0.01,0.06,0.01)", "epochs=60", "chunk=7"]
    sweeps = [start_runner(*args, f"hydra.sweep.dir=sweep{i}", cwd=tmp_path) for i in range(2)]
    for process in sweeps:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        assert "database is locked" not in err and "Traceback" not in err
    client = _store(tmp_path)
    runs = _runs(client)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 2 + 10 and len(children) == 10
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert _count_points(client, children) == 10 * 60 * 5  # every metric point, counted
