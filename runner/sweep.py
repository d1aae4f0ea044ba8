"""A sweep, start to end: its parent MLflow run opened before the first job, summary.csv
and the pictures once the last job has ended, and the parent ended with how it went.

runner/cli.py runs Hydra's multirun inside `with Sweep(...)`: the jobs, in this process
or elsewhere, find their parent through RUNNER_SWEEP_PARENT, which Hydra copies into every
job's environment (hydra.job.env_copy), whatever the launcher.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from runner import tracking
from runner.config import Config
from runner.logs import console
from runner.mlflow_sink import MlflowSink, end_the_unended, timeout
from runner.report import parameter_columns, summarize, sweep_plots
from runner.search import Study
from runner.store import default_tracking_uri, redact, redact_text, run_name
from runner.tracking import Ending, RunSpec, TrackingError

log = logging.getLogger("runner")
PARENT_VARIABLE = "RUNNER_SWEEP_PARENT"


class Sweep:
    """A sweep's parent run and its ending. A search's (`study`) is the study's parent run:
    a resumed search continues it, so all of a study's trials are its children."""

    def __init__(
        self,
        conf: Config,
        sweep_dir: Path,
        overrides: list[str],
        command: str,
        study: Study | None = None,
    ) -> None:
        self.conf, self.sweep_dir, self.study = conf, sweep_dir, study
        self.parent: MlflowSink | None = None
        if conf.mlflow.enabled:
            uri = conf.mlflow.tracking_uri or default_tracking_uri(Path.cwd())
            tags = {"runner.sweep_dir": str(sweep_dir),
                    "hydra.overrides": redact_text(" ".join(overrides)),
                    "runner.command": command, "runner.main_pid": str(os.getpid())}  # fmt: skip
            name, resume_by = f"sweep {run_name(overrides)}", None
            if study is not None:
                name, resume_by = f"search {run_name(overrides)}", "runner.study"
                tags |= {"runner.study": study.key, "optuna.study_name": study.name,
                         "optuna.storage": redact(study.storage)}  # fmt: skip
            spec = RunSpec(uri, conf.mlflow.experiment, name, {}, tags, resume_by)
            self.parent = MlflowSink(spec)

    def request(self) -> None:
        """Ask the store for the parent run now; entering takes its id."""
        if self.parent is not None:
            self.parent.request()

    def __enter__(self) -> Sweep:
        if self.parent is not None:
            # Opened here, before any job: the store's tables and the experiment then exist
            # before parallel jobs race to create them.
            self.parent.open()
            os.environ[PARENT_VARIABLE] = self.parent.run_id or ""
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        status = "FINISHED" if kind is None else "FAILED"
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            status = "KILLED"
        console()  # the last job's log file is closed: the sweep speaks on the console
        # A job with no result.json of a stopped sweep was stopped too (before or as it ran).
        summary = summarize(self.sweep_dir, unended="KILLED" if status == "KILLED" else "FAILED")
        path = self.sweep_dir / "summary.csv"
        summary.to_csv(path, index=False)
        _show(summary, path)
        if lost := summary.attrs.get("tracking_errors"):
            log.error(f"runner: error: MLflow failed for {len(lost)} of {len(summary)} jobs "
                      f"({lost[0][:200]}); they ended FAILED, their CSVs whole")  # fmt: skip
        # A stopped sweep ends at once: its pictures can wait for `runner.compare --plot`.
        pictures = _pictures(summary, self.sweep_dir) if status == "FINISHED" else []
        if self.parent is None:
            return
        # Jobs of killed workers, or runs whose tracking process died before it could tell
        # their id: every job has ended by now, so a child still RUNNING is an orphan.
        self._end_children("FAILED" if status == "FINISHED" else status)
        end_the_unended(retry=status != "KILLED")  # (a stopped sweep has waited its deadline)
        files = [str(p) for p in [path, *pictures]]
        # A study's parent holds every trial the study has: its counts and best are the
        # study's, not this run's.
        best = _best(summary) if self.study is None else self._study_record()
        self.parent.close(Ending(status, files=files, **best))

    def _study_record(self) -> dict[str, Any]:
        from runner.search import study_record

        try:
            tags, metrics = study_record(self.study)
        except Exception as err:  # the trials are in MLflow either way
            log.warning(f"runner: warning: the study's counts not tagged ({err})")
            return {}
        return {"tags": tags, "metrics": metrics}

    def _end_children(self, status: str) -> None:
        uri = self.parent.uri
        try:
            ended = tracking.tracker().call(tracking.end_children, uri, self.parent.run_id,
                                            status, timeout=timeout(uri))  # fmt: skip
        except TrackingError as err:
            log.error(f"runner: error: could not end the sweep's running jobs: {err}")
            return
        if ended and status == "FAILED":
            log.error(f"runner: error: {ended} MLflow run(s) left RUNNING by a tracking process "
                      "that died were ended FAILED")  # fmt: skip


def _show(summary: pd.DataFrame, path: Path) -> None:
    reused = ["reused"] if summary["reused"].any() else []
    shown = summary[["overrides", "status", *reused, "final_loss",
                     *parameter_columns(summary.columns)]]  # fmt: skip
    log.info(f"runner: sweep of {len(summary)} jobs, best first ({path}):")
    log.info(shown.head(5).to_string(index=False, float_format=lambda v: f"{v:.6g}"))


def _pictures(summary: pd.DataFrame, sweep_dir: Path) -> list[Path]:
    if summary.empty:
        return []
    try:
        return sweep_plots(summary, sweep_dir)
    except Exception as err:  # a picture is not worth a failed sweep
        log.warning(f"runner: warning: sweep plots skipped ({type(err).__name__}: {err})")
        return []


def _best(summary: pd.DataFrame) -> dict[str, Any]:
    """Tags and metrics for the parent run: how many jobs ended how, and the best one."""
    counts = summary["status"].value_counts()
    tags = {f"jobs.{status.lower()}": str(n) for status, n in counts.items()}
    if summary["reused"].any():
        tags["jobs.reused"] = str(int(summary["reused"].sum()))
    metrics = {}
    best = summary.iloc[0] if len(summary) else None
    if best is not None and best["status"] == "FINISHED":
        tags |= {"best_run_id": str(best["mlflow_run_id"]), "best_overrides": best["overrides"]}
        metrics = {
            f"best_{k}": float(best[k])
            for k in ("final_loss", *parameter_columns(summary.columns))
            if pd.notna(best[k])
        }
    return {"tags": tags, "metrics": metrics}
