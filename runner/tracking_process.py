"""The MLflow side of the runner, in a process of its own: `python -m runner.tracking_process`.

Why a process: importing MLflow and opening its store takes about 2.4 s, and the SQLite
store takes about 10,000 metric points a second; both are Python work that would hold
the training process's interpreter. Started when a run's config has checked out, this
process imports MLflow (its SQL store's code included) on another core while the runner
imports torch, and it writes the metrics while the loop trains on.
runner/mlflow_sink.py is the other end.

It reads commands from stdin and answers on stdout, each a length-prefixed pickle
(runner/frames.py). It ignores Ctrl-C and SIGTERM, which the runner turns into "end this
run as KILLED"; when its stdin closes (the runner ended, even by SIGKILL), it ends every
run still open as KILLED and exits.
"""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.tracking import sqlalchemy_store  # noqa: F401 - the SQLite store's code
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from runner.cleanup import process_tags
from runner.frames import FrameReader, write_frame
from runner.store import sqlite_path

_experiments: dict[tuple[str, str], tuple[MlflowClient, str]] = {}


def open_experiment(tracking_uri: str, name: str) -> tuple[MlflowClient, str]:
    """A client of the store and the experiment's id, both created on first use.

    For a local SQLite store this holds a file lock: two sweeps started at once on a new
    store would otherwise both create its tables, and one would fail.
    """
    if (tracking_uri, name) not in _experiments:  # once per process: a sweep's jobs share it
        db = sqlite_path(tracking_uri)
        if db is None:
            client = MlflowClient(tracking_uri)
            found = experiment_id(client, tracking_uri, name)
        else:
            db.parent.mkdir(parents=True, exist_ok=True)
            with open(db.with_name(db.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                client = MlflowClient(tracking_uri)  # opening the store may create or migrate it
                found = experiment_id(client, tracking_uri, name)
        _experiments[tracking_uri, name] = client, found
    return _experiments[tracking_uri, name]


def experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    """The experiment's id, created on first use."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    db = sqlite_path(tracking_uri)
    # Artifacts of a local store go beside its database file, wherever the run started from.
    artifact_location = None if db is None else (db.parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as err:
        # Another job of a parallel sweep created it between our lookup and our create.
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


class Run:
    """One open MLflow run. After the first failed metric batch it drops the rest and keeps
    the error, to raise when the run is ended."""

    def __init__(self, client: MlflowClient, run: Any, tracking_uri: str) -> None:
        self.client, self.id = client, run.info.run_id
        # The run's artifact store, resolved once (log_artifact would look the run up in
        # the database again for every file).
        self.files = get_artifact_repository(run.info.artifact_uri, tracking_uri)
        self.error: Exception | None = None


class Tracker:
    """The commands the runner sends; each returns what the runner needs, or raises."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}

    def open_run(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
    ) -> str:
        client, experiment_id = open_experiment(tracking_uri, experiment)
        # This process writes the run and ends it: `runner.cleanup` checks that it lives.
        tags = tags | process_tags()
        info = client.create_run(experiment_id, run_name=run_name, tags=tags)
        run = Run(client, info, tracking_uri)
        self.runs[run.id] = run
        if params:
            client.log_batch(run.id, params=[Param(k, _param_value(v)) for k, v in params.items()])
        return run.id

    def metrics(self, run_id: str, epochs: Any, columns: dict[str, Any]) -> None:
        """One chunk of per-epoch metrics (numpy arrays), step=epoch; the client splits it
        into batches."""
        run = self.runs[run_id]
        if run.error is not None:
            return
        now, steps = int(time.time() * 1000), epochs.tolist()
        points = [
            Metric(name, value, now, step)
            for name, values in columns.items()
            for step, value in zip(steps, values.tolist(), strict=True)
        ]
        try:
            run.client.log_batch(run_id, metrics=points)
        except Exception as err:
            run.error = err
            raise

    def end_run(
        self,
        run_id: str,
        status: str,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        config_yaml: str | None = None,
        files: list[str] | None = None,
    ) -> None:
        """Final metrics, tags and artifacts, then the status: FINISHED, FAILED or KILLED."""
        run = self.runs.pop(run_id)
        if run.error is not None:  # the store failed mid-run: no half-logged FINISHED run
            run.client.set_terminated(run_id, "FAILED" if status == "FINISHED" else status)
            raise run.error
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, 0) for k, v in (metrics or {}).items()]
        labels = [RunTag(k, v) for k, v in (tags or {}).items()]
        if points or labels:
            run.client.log_batch(run_id, metrics=points, tags=labels)
        with tempfile.TemporaryDirectory() as tmp:
            paths = list(files or [])
            if config_yaml is not None:
                (Path(tmp) / "config.yaml").write_text(config_yaml)
                paths.insert(0, str(Path(tmp) / "config.yaml"))
            for path in paths:
                run.files.log_artifact(path)
        run.client.set_terminated(run_id, RunStatus.to_string(RunStatus.from_string(status)))

    def end_all(self, status: str) -> None:
        """The runner is gone: no run stays RUNNING."""
        for run_id in list(self.runs):
            try:
                self.end_run(run_id, status)
            except Exception as err:
                print(f"runner: error: could not end MLflow run {run_id}: {err}", file=sys.stderr)


def _param_value(value: str) -> str:
    limit = MAX_PARAM_VAL_LENGTH
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


def serve(commands: int, answers: int) -> None:
    """Run commands until the runner closes its end; answer those that carry an id."""
    # A thread keeps the pipe drained, so the runner does not wait to send; past 64 queued
    # commands (64,000 epochs of metrics) it waits, and so does the runner: memory stays
    # bounded when training outpaces the store.
    inbox: queue.Queue[Any] = queue.Queue(maxsize=64)

    def read() -> None:
        reader = FrameReader(commands)
        while (frame := reader.read()) is not None:
            inbox.put(frame)
        inbox.put(None)

    threading.Thread(target=read, name="commands", daemon=True).start()
    tracker = Tracker()
    while (command := inbox.get()) is not None:
        request, name, kwargs = command
        try:
            answer = (request, True, getattr(tracker, name)(**kwargs))
        except Exception as err:
            answer = (request, False, _one_line(err))
            if request is None:  # a failed metric chunk: told at once, with its run
                answer = (None, False, (kwargs.get("run_id"), answer[2]))
        if request is not None or not answer[1]:
            write_frame(answers, answer)
    tracker.end_all("KILLED")
    os._exit(0)  # every write is committed; skip tearing down MLflow's modules (~1 s)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides how its runs end
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    answers = os.dup(1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the answers
    serve(sys.stdin.fileno(), answers)


if __name__ == "__main__":
    main()
