"""`python -m runner.compare`: runs from MLflow as a pandas table, a CSV and a loss plot.

python -m runner.compare                       # every run of experiment 'runner'
python -m runner.compare --sweep latest        # the children of the newest sweep
python -m runner.compare --filter "params.optimizer.name = 'sgd'" --csv runs.csv --plot loss.png
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import pandas as pd

from runner.config import Config
from runner.store import default_tracking_uri, missing_store_error

PAGE = 1000  # MLflow's page size; we follow page tokens, so there is no cap on runs


def param_types(schema: type = Config, prefix: str = "") -> dict[str, Any]:
    """Flattened config key -> Python type, from the schema the runs were logged from."""
    types: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        if dataclasses.is_dataclass(hint):
            types |= param_types(hint, f"{prefix}{f.name}.")
        else:
            types[prefix + f.name] = hint
    return types


def cast_param(text: str | None, hint: Any) -> Any:
    """A logged param string back as its config type (MLflow stores every param as text).

    Params outside the schema (optimum.a, stable_lr_max, ...) come back as numbers where
    they are numbers."""
    if text is None or text == "None":
        return None
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is list:
        return ast.literal_eval(text)
    if hint is bool:
        return text == "True"
    if hint in (int, float):
        return hint(text)
    if hint is None:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def fetch_runs(client: Any, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    """Every matching run, page by page."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=PAGE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: list[Any]) -> pd.DataFrame:
    """One row per run: id, name, status, typed params, final metrics, divergence."""
    types = param_types()
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "diverged": r.data.tags.get("diverged") == "true",
        }
        row |= {k: v for k, v in r.data.metrics.items() if k.startswith(("final_", "best_"))}
        row |= {k: cast_param(v, types.get(k)) for k, v in r.data.params.items()}
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "final_loss" in frame:
        frame = frame.sort_values("final_loss", na_position="last", kind="stable")
    return frame.reset_index(drop=True)


def plot_losses(client: Any, frame: pd.DataFrame, path: Path, top: int) -> int:
    """Overlay the per-epoch loss of the first `top` runs on a log axis; return how many."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    drawn = 0
    for row in frame.head(top).itertuples(index=False):
        history = client.get_metric_history(row.run_id, "loss")
        if not history:
            continue
        steps, values = zip(*sorted((m.step, m.value) for m in history), strict=True)
        label = row.run_name + (" (diverged)" if row.diverged else "")
        ax.plot(steps, values, label=label, linestyle="--" if row.diverged else "-")
        drawn += 1
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE, log scale)")
    ax.set_title(f"Loss per epoch, {drawn} run{'s' * (drawn != 1)}")
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize="small", loc="upper right")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tracking-uri", help="default: sqlite:///<this directory>/mlflow.db")
    parser.add_argument("--experiment", default="runner", help="experiment name (default: runner)")
    parser.add_argument("--sweep", help="a sweep's parent run id, or 'latest'")
    parser.add_argument(
        "--filter", default="", help="an MLflow search filter, e.g. \"params.lr > '0.01'\""
    )
    parser.add_argument("--csv", type=Path, help="write the table to this CSV file")
    parser.add_argument("--plot", type=Path, help="write a PNG of the loss curves")
    parser.add_argument("--top", type=int, default=10, help="runs to plot, best first (default 10)")
    args = parser.parse_args(argv)

    from mlflow import MlflowClient

    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if missing := missing_store_error(uri):
        return _fail(missing)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        return _fail(f"no experiment '{args.experiment}' in {uri}")
    filters = [args.filter] if args.filter else []
    if args.sweep:
        parent = (
            _latest_sweep(client, experiment.experiment_id)
            if args.sweep == "latest"
            else args.sweep
        )
        if parent is None:
            return _fail(f"no sweep in experiment '{args.experiment}'")
        filters.append(f"tags.mlflow.parentRunId = '{parent}'")
    frame = runs_frame(fetch_runs(client, [experiment.experiment_id], " and ".join(filters)))
    if frame.empty:
        return _fail("no runs match")

    shown = [
        c
        for c in ("run_name", "status", "final_loss", "final_a", "final_b", "run_id")
        if c in frame
    ]
    print(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    print(f"{len(frame)} runs")
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"csv  {args.csv}")
    if args.plot:
        drawn = plot_losses(client, frame, args.plot, args.top)
        print(f"plot {args.plot} ({drawn} loss curves)")
    return 0


def _latest_sweep(client: Any, experiment_id: str) -> str | None:
    found = client.search_runs(
        [experiment_id],
        filter_string="tags.runner.sweep_dir != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def _fail(message: str) -> int:
    print(f"runner.compare: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
