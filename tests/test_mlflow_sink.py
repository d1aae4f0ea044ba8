"""The tracking process and the pipe between it and the runner (runner/mlflow_sink.py,
runner/tracking_process.py, runner/frames.py), against a real SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from runner.frames import FrameReader, write_frame
from runner.mlflow_sink import MlflowSink, TrackingError, TrackingProcess
from runner.store import TrackingUnavailable


def test_frames_arrive_whole_through_a_pipe_fed_a_byte_at_a_time() -> None:
    messages = [("open_run", {"x": 1.5}), list(range(1000)), None, "end"]
    raw_read, raw_write = os.pipe()
    for message in messages:
        write_frame(raw_write, message)
    os.close(raw_write)
    data = os.read(raw_read, 1 << 20)
    os.close(raw_read)

    read_end, write_end = os.pipe()

    def dribble() -> None:  # every frame arrives in pieces, as reads are cut short
        for i in range(len(data)):
            os.write(write_end, data[i : i + 1])
        os.close(write_end)

    feeder = threading.Thread(target=dribble)
    feeder.start()
    reader = FrameReader(read_end)
    assert [reader.read() for _ in messages] == messages
    assert reader.read() is None  # the writer closed its end
    feeder.join()
    os.close(read_end)


def test_the_runner_process_never_imports_mlflow() -> None:
    code = (
        "import sys; import runner.app, runner.cli, runner.mlflow_sink, runner.sweep;"
        "print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def _chunk(first: int, n: int) -> pd.DataFrame:
    epochs = list(range(first, first + n))
    return pd.DataFrame({"epoch": epochs, "loss": [1.0 / (e + 1) for e in epochs]})


def test_a_run_goes_through_the_tracking_process(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MlflowSink(uri, "exp", "lr=0.1", {"lr": 0.1}, {"hydra.overrides": "lr=0.1"})
    for first in (0, 3, 6):
        sink.write(_chunk(first, 3))
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,loss\n")
    sink.finish({"final_loss": 0.1}, "lr: 0.1\n", [csv], {"done": "yes"})

    run = MlflowClient(uri).get_run(sink.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.1" and run.data.tags["done"] == "yes"
    assert run.data.tags["runner.pid"] == str(sink.child.process.pid)  # the writer
    steps = [m.step for m in MlflowClient(uri).get_metric_history(sink.run_id, "loss")]
    assert steps == list(range(9))
    files = {a.path for a in MlflowClient(uri).list_artifacts(sink.run_id)}
    assert files == {"config.yaml", "metrics.csv"}


def test_the_tracking_process_ends_open_runs_as_killed_when_the_runner_goes(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child = TrackingProcess()  # not the shared one: this test closes it
    run_id = child.call(
        "open_run", tracking_uri=uri, experiment="exp", run_name="x", params={}, tags={}
    )
    losses = {"loss": np.array([1.0, 0.5])}
    child.send("metrics", run_id=run_id, epochs=np.arange(2), columns=losses)
    child.process.stdin.close()  # what the runner's death looks like from there
    assert child.process.wait(timeout=60) == 0
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    assert len(MlflowClient(uri).get_metric_history(run_id, "loss")) == 2


def test_an_unusable_store_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the store's directory should be
    with pytest.raises(TrackingUnavailable, match=r"^cannot open an MLflow run at sqlite:///"):
        MlflowSink(f"sqlite:///{blocker}/mlflow.db", "exp", "x", {}, {})


def test_a_failed_metric_chunk_is_told_at_the_next_write(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MlflowSink(uri, "exp", "x", {}, {})
    sink.write(pd.DataFrame({"epoch": [0], "loss": ["not a number"]}))
    sink.child.call(
        "open_run", tracking_uri=uri, experiment="exp", run_name="y", params={}, tags={}
    )  # fmt: skip - a round trip: the failure is in by now
    with pytest.raises(TrackingError):
        sink.write(_chunk(1, 2))
