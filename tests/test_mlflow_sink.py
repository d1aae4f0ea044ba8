"""The MLflow sink and the tracking process behind it (runner/mlflow_sink.py,
runner/tracking.py), against a real SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from runner import tracking
from runner.mlflow_sink import MlflowSink, StoreUnavailable
from runner.tracking import Ending, RunSpec, Tracker

# A tracking process of its own (a subprocess) for every run: the end-to-end kind.
pytestmark = pytest.mark.slow


def test_the_runner_process_never_imports_mlflow() -> None:
    code = (
        "import sys; import runner.run, runner.cli, runner.mlflow_sink, runner.sweep;"
        "print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def _chunk(first: int, n: int) -> pd.DataFrame:
    epochs = list(range(first, first + n))
    return pd.DataFrame({"epoch": epochs, "loss": [1.0 / (e + 1) for e in epochs]})


def _spec(uri: str, name: str = "lr=0.1") -> RunSpec:
    return RunSpec(uri, "exp", name, {"lr": "0.1"}, {"hydra.overrides": name})


def test_a_run_goes_through_the_tracking_process(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MlflowSink(_spec(uri))
    sink.open()
    for first in (0, 3, 6):
        sink.write(_chunk(first, 3))
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,loss\n")
    sink.close(Ending("FINISHED", {"final_loss": 0.1}, {"done": "yes"}, [str(csv)],
                      {"config.yaml": "lr: 0.1\n"}))  # fmt: skip

    run = MlflowClient(uri).get_run(sink.run_id)
    assert run.info.status == "FINISHED" and sink.error is None
    assert run.data.params["lr"] == "0.1" and run.data.tags["done"] == "yes"
    assert run.data.tags["runner.pid"] == str(tracking.tracker().process.pid)  # the writer
    steps = [m.step for m in MlflowClient(uri).get_metric_history(sink.run_id, "loss")]
    assert steps == list(range(9))
    files = {a.path for a in MlflowClient(uri).list_artifacts(sink.run_id)}
    assert files == {"config.yaml", "metrics.csv"}


def test_the_tracking_process_ends_open_runs_as_killed_when_the_runner_goes(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child = Tracker()  # not the shared one: this test closes it
    run_id = child.call(tracking.open_run, _spec(uri), timeout=120)
    child.send_metrics(uri, run_id, np.arange(2), {"loss": np.array([1.0, 0.5])}, timeout=120)
    child.conn.close()  # what the runner's death looks like from there
    assert child.process.wait(timeout=60) == 0
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    assert len(MlflowClient(uri).get_metric_history(run_id, "loss")) == 2


def test_an_unusable_store_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the store's directory should be
    sink = MlflowSink(_spec(f"sqlite:///{blocker}/mlflow.db"))
    with pytest.raises(StoreUnavailable, match=r"^cannot open an MLflow run at sqlite:///"):
        sink.open()


def test_a_failed_metric_chunk_is_noticed_and_the_run_ends_failed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MlflowSink(_spec(uri))
    sink.open()
    sink.write(pd.DataFrame({"epoch": [0], "loss": ["not a number"]}))
    sink.write(_chunk(1, 2))  # noticed here or at the end, never raised
    sink.close(Ending("FINISHED", {"final_loss": 0.1}))
    assert sink.error
    run = MlflowClient(uri).get_run(sink.run_id)
    assert run.info.status == "FAILED" and run.data.tags["runner.tracking_error"]


def test_a_killed_tracking_process_is_noticed_and_the_run_ended_failed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MlflowSink(_spec(uri))
    sink.open()
    sink.write(_chunk(0, 3))
    tracker = tracking.tracker()
    os.kill(tracker.process.pid, signal.SIGKILL)
    tracker.reader.join(timeout=30)  # the answers' reader sees the pipe close, and ends
    assert not tracking.started()
    sink.write(_chunk(3, 3))
    sink.close(Ending("FINISHED"))  # through a fresh tracking process
    assert "ended unexpectedly" in (sink.error or "")
    assert MlflowClient(uri).get_run(sink.run_id).info.status == "FAILED"
