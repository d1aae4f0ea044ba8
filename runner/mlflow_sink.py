"""MLflow sink: one run with params, tags, per-epoch metrics in batches, final metrics, artifacts.

It talks to the store through MlflowClient and an explicit run id, never through the
fluent "active run", so several runs in one process (a basic-launcher sweep) cannot
collide. Per-epoch metrics go to the store from a background thread, one log_batch per
chunk, while the loop goes on; every way of ending the run waits for it first.
"""

from __future__ import annotations

import fcntl
import functools
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from runner.checks import first_line
from runner.store import TrackingUnavailable, redact, sqlite_path


@functools.cache  # once per process: the jobs of a basic-launcher sweep share the store
def open_experiment(tracking_uri: str, name: str) -> tuple[MlflowClient, str]:
    """A client of the store and the experiment's id, both created on first use.

    For a local SQLite store this holds a file lock: two sweeps started at once on a new
    store would otherwise both create its tables, and one would fail.
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        client = MlflowClient(tracking_uri)
        return client, experiment_id(client, tracking_uri, name)
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(tracking_uri)  # opening the store may create or migrate it
        return client, experiment_id(client, tracking_uri, name)


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


class _MetricWriter(threading.Thread):
    """Logs the queued chunks in order; after the first error it drops the rest and keeps
    the error for the sink to raise."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        super().__init__(name="mlflow-metrics", daemon=True)
        self.client, self.run_id = client, run_id
        self.chunks: queue.Queue[pd.DataFrame | None] = queue.Queue(maxsize=4)  # back-pressure
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            if self.error is None:
                try:
                    self.client.log_batch(self.run_id, metrics=_metrics(chunk))
                except Exception as err:
                    self.error = err

    def drain(self) -> None:
        """Wait until every queued chunk is in the store; raise what went wrong, if anything."""
        if self.is_alive():
            self.chunks.put(None)
            self.join()
        if self.error is not None:
            raise self.error


def _metrics(chunk: pd.DataFrame) -> list[Metric]:
    """A chunk of epochs as metrics with step=epoch; the client splits them into batches."""
    now = int(time.time() * 1000)
    steps = chunk["epoch"].tolist()
    return [
        Metric(name, value, now, step)
        for name in chunk.columns[1:]
        for step, value in zip(steps, chunk[name].tolist(), strict=True)
    ]


class MlflowSink:
    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
    ) -> None:
        self.tracking_uri = tracking_uri
        try:
            self.client, self.experiment_id = open_experiment(tracking_uri, experiment)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            # The run's artifact store, resolved once (log_artifact would look the run up
            # in the database again for every file).
            self._files = get_artifact_repository(run.info.artifact_uri, tracking_uri)
            self.client.log_batch(
                self.run_id, params=[Param(k, _param_value(v)) for k, v in params.items()]
            )
            self._writer = _MetricWriter(self.client, self.run_id)
        except Exception as err:
            reason = first_line(err)[:300]
            raise TrackingUnavailable(
                f"cannot open an MLflow run at {redact(tracking_uri)}: {reason}"
            ) from err

    def write(self, chunk: pd.DataFrame) -> None:
        """Queue a chunk of epochs for the background writer; raise if it has failed."""
        if self._writer.error is not None:
            raise self._writer.error
        self._writer.chunks.put(chunk)

    def finish(
        self, final: dict[str, float], config_yaml: str, files: list[Path], tags: dict[str, str]
    ) -> None:
        """Final metrics, tags and artifacts, then FINISHED."""
        self._writer.drain()
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in final.items()]
        self.client.log_batch(
            self.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()]
        )
        self._artifacts(config_yaml, files)
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))

    def failed(self, tags: dict[str, str], config_yaml: str, files: list[Path]) -> None:
        """FAILED, tagged with why (e.g. diverged_at_epoch); no final metrics, which could
        be inf or NaN."""
        self._writer.drain()
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self._artifacts(config_yaml, files)
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FAILED))

    def _artifacts(self, config_yaml: str, files: list[Path]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(config_yaml)
            for path in [config, *files]:
                self._files.log_artifact(str(path))

    def abort(self, status: str) -> None:
        """End the run as FAILED or KILLED, with every chunk already handed over; never
        leave it RUNNING."""
        try:
            self._writer.drain()
        finally:
            self.client.set_terminated(self.run_id, status)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
