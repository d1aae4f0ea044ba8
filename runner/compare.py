"""`python -m runner.compare`: runs from MLflow as a pandas table, a CSV and a loss plot.

python -m runner.compare                       # every run of experiment 'runner'
python -m runner.compare --sweep latest        # the children of the newest sweep
python -m runner.compare --filter "params.optimizer.name = 'sgd'" --csv runs.csv --plot loss.png
"""

from __future__ import annotations

import argparse
import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.config import Config
from runner.logs import let_go_of
from runner.report import Curve, parameter_columns, plot_loss_curves, rank
from runner.store import default_tracking_uri, missing_store_error

PAGE = 1000  # runs per request; MLflow's pager follows the page tokens, so there is no cap


@functools.cache
def _schema() -> DictConfig:
    return OmegaConf.structured(Config)


def cast_param(key: str, text: str | None) -> Any:
    """A logged param string back as its config type (MLflow stores every param as text).

    The value is merged onto the structured schema, so OmegaConf converts it as it would
    a command-line override ("0.05" -> 0.05, "False" -> False, "[1.0, 2.0]" -> a list).
    Keys outside the schema (optimum.a, stable_lr_max, ...) come back as numbers where they
    are numbers; a value the schema refuses (e.g. a list MLflow cut short) stays text.
    """
    value = _cast(key, text)
    return list(value) if isinstance(value, list) else value  # a copy: the cache keeps one


@functools.cache  # a table of many runs repeats the same few (key, value) pairs
def _cast(key: str, text: str | None) -> Any:
    if text is None or text == "None":  # str(None): how the runner logs a null setting
        return None
    if OmegaConf.select(_schema(), key, default=KeyError) is KeyError:  # not a config key
        try:
            return float(text)
        except ValueError:
            return text
    try:
        merged = OmegaConf.merge(_schema(), OmegaConf.from_dotlist([f"{key}={text}"]))
        value = OmegaConf.select(merged, key)
    except Exception:  # refused by YAML or by the schema's type: keep what MLflow holds
        return text
    if isinstance(value, Enum):  # a choice (optimizer.name): its plain value, as logged
        return value.value
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def fetch_runs(client: Any, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    """Every matching run, oldest first; MLflow's own pager follows the page tokens."""
    from mlflow.utils import get_results_from_paginated_fn

    def page(size: int, token: str | None) -> Any:
        return client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=size,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )

    return get_results_from_paginated_fn(page, PAGE)


def _status(run: Any) -> str:
    return "PRUNED" if run.data.tags.get("pruned") == "true" else run.info.status


def runs_frame(runs: list[Any]) -> pd.DataFrame:
    """One row per run, best first (report.rank): id, name, status, divergence, final and
    best metrics, typed params. A run tagged diverged=true has status DIVERGED, and one
    tagged pruned=true PRUNED, as in a sweep's summary.csv (MLflow itself records them as
    FAILED and KILLED)."""
    rows = []
    for r in runs:
        diverged = r.data.tags.get("diverged") == "true"
        row: dict[str, Any] = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": "DIVERGED" if diverged else _status(r),
            "diverged": diverged,
        }
        row |= {k: v for k, v in r.data.metrics.items() if k.startswith(("final_", "best_"))}
        row |= {k: cast_param(k, v) for k, v in r.data.params.items()}
        rows.append(row)
    frame = pd.DataFrame(rows)
    return rank(frame) if len(frame) else frame


def loss_curves(client: Any, frame: pd.DataFrame, top: int) -> list[Curve]:
    """The per-epoch loss of the first `top` runs of the frame that logged any."""
    curves = []
    for row in frame.head(top).itertuples(index=False):
        history = client.get_metric_history(row.run_id, "loss")
        if history:
            points = sorted((m.step, m.value) for m in history)
            steps, values = np.array(points).T
            curves.append((row.run_name, steps, values, row.status))
    return curves


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if missing := missing_store_error(uri):
        return _fail(missing)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        return _fail(f"no experiment '{args.experiment}' in {uri}")
    filters = [args.filter] if args.filter else []
    if args.sweep:
        parent = args.sweep
        if parent == "latest":
            parent = _latest_sweep(client, experiment.experiment_id)
        if parent is None:
            return _fail(f"no sweep in experiment '{args.experiment}'")
        filters.append(f"tags.mlflow.parentRunId = '{parent}'")
    try:
        runs = fetch_runs(client, [experiment.experiment_id], " and ".join(filters))
    except MlflowException as err:  # a filter MLflow cannot parse: the user's to fix
        what = f"--filter {args.filter!r}" if args.filter else "the search"
        return _fail(f"MLflow rejected {what}: {_first_line(err)}")
    frame = runs_frame(runs)
    if frame.empty:
        return _fail("no runs match")

    shown = ["run_name", "status", "final_loss", *parameter_columns(frame.columns), "run_id"]
    shown = [c for c in shown if c in frame]
    try:
        print(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.6g}"))
        print(f"{len(frame)} runs", flush=True)
    except BrokenPipeError:  # `python -m runner.compare | head`: the reader has what it wanted
        let_go_of(sys.stdout)  # (the lines below go nowhere; the files are still written)
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"csv  {args.csv}")
    if args.plot:
        curves = loss_curves(client, frame, args.top)
        title = f"Loss per epoch, best {len(curves)} of {len(frame)} runs"
        drawn = plot_loss_curves(curves, args.plot, title)
        print(f"plot {args.plot} ({drawn} loss curves)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tracking-uri", help="default: sqlite:///<this directory>/mlflow.db")
    parser.add_argument("--experiment", default="runner", help="experiment name (default: runner)")
    parser.add_argument("--sweep", help="a sweep's parent run id, or 'latest'")
    parser.add_argument(
        "--filter",
        default="",
        help='an MLflow search filter, e.g. "metrics.final_loss < 0.01" or '
        "\"params.optimizer.name = 'sgd'\" (params are text: only = and != compare them)",
    )
    parser.add_argument("--csv", type=Path, help="write the table to this CSV file")
    parser.add_argument("--plot", type=Path, help="write a PNG of the loss curves")
    parser.add_argument("--top", type=int, default=10, help="runs to plot, best first (default 10)")
    return parser


def _latest_sweep(client: Any, experiment_id: str) -> str | None:
    found = client.search_runs(
        [experiment_id],
        filter_string="tags.runner.sweep_dir != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def _first_line(err: Exception) -> str:
    lines = str(getattr(err, "message", err)).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _fail(message: str) -> int:
    print(f"runner.compare: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
