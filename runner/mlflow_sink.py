"""MLflow sink: one run with params, tags, per-epoch metrics in batches, final metrics, artifacts.

It talks to the store through MlflowClient and an explicit run id, never through the
fluent "active run", so several runs in one process (a basic-launcher sweep) cannot
collide.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH


def default_tracking_uri(launch_dir: Path) -> str:
    """An absolute SQLite URI, so every job of a sweep writes to the same store."""
    return f"sqlite:///{(launch_dir / 'mlflow.db').resolve()}"


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
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = self._experiment_id(experiment)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.client.log_batch(
            self.run_id, params=[Param(k, _param_value(v)) for k, v in params.items()]
        )

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifact_location = None
        if self.tracking_uri.startswith("sqlite:///"):
            # Artifacts beside the database file, wherever the run was started from.
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            artifact_location = (db.parent / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as err:
            # Another job of a parallel sweep created it between our lookup and our create.
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def write(self, chunk: pd.DataFrame) -> None:
        """Log a chunk of epochs as metrics with step=epoch; the client splits it into batches."""
        now = int(time.time() * 1000)
        steps = chunk["epoch"].tolist()
        metrics = [
            Metric(name, value, now, step)
            for name in chunk.columns[1:]
            for step, value in zip(steps, chunk[name].tolist(), strict=True)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, final: dict[str, float], config_yaml: str, files: list[Path]) -> None:
        """Final metrics and artifacts, then FINISHED."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in final.items()])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))

    def abort(self, status: str) -> None:
        """End the run as FAILED or KILLED; never leave it RUNNING."""
        self.client.set_terminated(self.run_id, status)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
