"""Sweeps: one MLflow parent run per multirun, and summary.csv when it ends.

Hydra calls SweepCallback in the process that launches the jobs, once before the first
job and once after the last, whatever the launcher or sweeper. Jobs find the parent run
through a small file in the sweep directory, which also works for jobs in other processes.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.checks import task_overrides
from runner.signals import sigterm_raises
from runner.store import TrackingUnavailable, default_tracking_uri, redact, run_name

PARENT_FILE = "mlflow_parent.json"
SUMMARY_COLUMNS = [
    "job",
    "overrides",
    "status",
    "lr",
    "stable_lr_max",
    "final_loss",
    "final_a",
    "final_b",
    "epochs_run",
    "diverged_at_epoch",
    "converged_at_epoch",
    "mlflow_run_id",
]
STATUS_ORDER = {"FINISHED": 0, "DIVERGED": 1, "KILLED": 2, "FAILED": 3}


def parent_run_id(sweep_dir: Path) -> str | None:
    """The sweep's parent run, for a job of that sweep (None when MLflow is off)."""
    path = sweep_dir / PARENT_FILE
    return json.loads(path.read_text())["run_id"] if path.is_file() else None


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.parent: str | None = None  # the parent run's id, while it is open

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not config.mlflow.enabled:
            return
        from runner.mlflow_sink import TrackingError, tracking_process

        uri = config.mlflow.tracking_uri or default_tracking_uri(Path(config.hydra.runtime.cwd))
        overrides = [redact(o) for o in task_overrides(config)]
        tags = {"runner.sweep_dir": str(sweep_dir), "hydra.overrides": " ".join(overrides)}
        tags["runner.main_pid"] = str(os.getpid())  # the launching process
        # Created here, in the launching process and before any job starts: the store's
        # tables and the experiment then exist before parallel jobs race to create them.
        try:
            run_id = tracking_process().call(
                "open_run", tracking_uri=uri, experiment=config.mlflow.experiment,
                run_name=f"sweep {run_name(overrides)}", params={}, tags=tags,
            )  # fmt: skip
        except TrackingError as err:
            why = f"cannot open an MLflow run at {redact(uri)}: {err}"
            raise TrackingUnavailable(why) from None
        self.parent = run_id  # (launchers pickle this callback: no process handle in it)
        (sweep_dir / PARENT_FILE).write_text(json.dumps({"run_id": run_id}) + "\n")
        # Ctrl-C, SIGTERM or a crash ends the parent as KILLED/FAILED instead of RUNNING.
        atexit.register(self._end_parent, "KILLED")
        sigterm_raises()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        summary = summarize(sweep_dir)
        path = sweep_dir / "summary.csv"
        summary.to_csv(path, index=False)
        shown = summary[["overrides", "status", "final_loss", "final_a", "final_b"]]
        print(f"runner: sweep of {len(summary)} jobs, best first ({path}):")
        print(shown.head(5).to_string(index=False, float_format=lambda v: f"{v:.6g}"))
        pictures = _sweep_plots(summary, sweep_dir)
        if self.parent is not None:
            files = [str(p) for p in [path, *pictures]]
            self._end_parent("FINISHED", **_best(summary), files=files)

    def _end_parent(self, status: str, **summary: Any) -> None:
        if self.parent is not None:
            from runner.mlflow_sink import TrackingError, tracking_process

            run_id, self.parent = self.parent, None
            try:
                tracking_process().call("end_run", run_id=run_id, status=status, **summary)
            except TrackingError as err:  # also at exit: one line, not a traceback
                print(f"runner: error: MLflow could not end the sweep's run {run_id}: {err}",
                      file=sys.stderr)  # fmt: skip


def summarize(sweep_dir: Path) -> pd.DataFrame:
    """One row per job of the sweep, best first: finished by final loss, then the rest."""
    rows = []
    for job_dir in sweep_dir.iterdir():
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        if not (job_dir.name.isdigit() and overrides_file.is_file()):
            continue
        row: dict[str, Any] = {
            "job": int(job_dir.name),
            "overrides": " ".join(OmegaConf.load(overrides_file)),
        }
        result_file = job_dir / "result.json"
        if result_file.is_file():
            result = json.loads(result_file.read_text())
            row |= {k: v for k, v in result.items() if k != "final"} | result["final"]
        else:  # the job died before it could say how it ended
            row |= {"status": "FAILED", "final_loss": math.inf}
        rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary = summary.astype(
        {"epochs_run": "Int64", "diverged_at_epoch": "Int64", "converged_at_epoch": "Int64"}
    )
    summary["rank"] = summary["status"].map(STATUS_ORDER)
    summary = summary.sort_values(["rank", "final_loss", "job"]).drop(columns="rank")
    return summary.reset_index(drop=True)


def _sweep_plots(summary: pd.DataFrame, sweep_dir: Path) -> list[Path]:
    from runner.plots import sweep_plots

    try:
        return sweep_plots(summary, sweep_dir)
    except Exception as err:  # a picture is not worth a failed sweep
        print(f"runner: warning: sweep plots skipped ({type(err).__name__}: {err})")
        return []


def _best(summary: pd.DataFrame) -> dict[str, Any]:
    """Tags and metrics for the parent run: how many jobs ended how, and the best one."""
    counts = summary["status"].value_counts()
    tags = {f"jobs.{status.lower()}": str(n) for status, n in counts.items()}
    metrics = {}
    best = summary.iloc[0] if len(summary) else None
    if best is not None and best["status"] == "FINISHED":
        tags |= {"best_run_id": str(best["mlflow_run_id"]), "best_overrides": best["overrides"]}
        metrics = {
            f"best_{k}": float(best[k])
            for k in ("final_loss", "final_a", "final_b")
            if pd.notna(best[k])
        }
    return {"tags": tags, "metrics": metrics}


def _sweep_dir(config: DictConfig) -> Path:
    return Path(config.hydra.runtime.cwd) / str(config.hydra.sweep.dir)
