"""Reporting on many runs: a sweep's summary table, its pictures, and the loss-curve overlay
that `python -m runner.compare --plot` draws too.

One ranking (`rank`) and one loss-curve plotter (`draw_loss_curves`) serve both the sweep's
summary.csv and compare, so the two list the same runs in the same order with the same
statuses. matplotlib is imported only when something is drawn: the command line imports
this module through the sweep callback, and `--help` must stay fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUMMARY_COLUMNS = [
    "job",
    "overrides",
    "status",
    "reused",  # true: not run again, its identical run FINISHED before (runner/reuse.py)
    "lr",
    "stable_lr_max",
    "final_loss",
    "final_a",  # the final parameters: final_a, final_b, or final_w1..final_wk, final_b
    "final_b",
    "epochs_run",
    "diverged_at_epoch",
    "converged_at_epoch",
    "stalled_at_epoch",
    "mlflow_run_id",
]
# Best first: finished runs (by final loss), then the ones that ran off, were stopped, broke.
STATUS_ORDER = {"FINISHED": 0, "DIVERGED": 1, "KILLED": 2, "FAILED": 3}
INT_COLUMNS = ("epochs_run", "diverged_at_epoch", "converged_at_epoch", "stalled_at_epoch")
FLOAT_COLUMNS = ("lr", "stable_lr_max", "final_loss")
NOT_PARAMETERS = ("final_loss", "final_gap", "final_distance")
WIDE = (8, 5)  # inches; every picture of this module has this size
DPI = 110

# (label, epochs, losses, status): one line of a loss-curve picture.
Curve = tuple[str, np.ndarray, np.ndarray, str]


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Best first: by STATUS_ORDER (other statuses, e.g. RUNNING, last), then final loss
    (missing or non-finite counts as inf), then job number where there is one; otherwise
    the incoming order breaks ties."""
    keys = pd.DataFrame(index=frame.index)
    keys["status"] = frame["status"].map(STATUS_ORDER).fillna(len(STATUS_ORDER))
    loss = frame["final_loss"] if "final_loss" in frame else pd.Series(np.nan, frame.index)
    keys["loss"] = pd.to_numeric(loss, errors="coerce").fillna(math.inf)
    if "job" in frame:
        keys["job"] = frame["job"]
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def parameter_columns(columns: Any) -> list[str]:
    """The final parameters among `columns`, in their order: final_a, final_b, or
    final_w1..final_wk, final_b for k features."""
    found = [c for c in columns if c.startswith("final_") and c not in NOT_PARAMETERS]
    return sorted(found, key=lambda c: (c == "final_b", len(c), c))  # a or w1..wk, then b


def summarize(sweep_dir: Path) -> pd.DataFrame:
    """One row per job directory `<sweep_dir>/<N>/` (SUMMARY_COLUMNS, with the jobs' own
    parameter columns where they are not a and b), ranked best first."""
    rows = [_job_row(d) for d in sweep_dir.iterdir() if d.name.isdigit()]
    rows = [row for row in rows if row is not None]
    found = parameter_columns(dict.fromkeys(c for row in rows for c in row))  # (in order)
    params = found if found and found != ["final_a"] else ["final_a", "final_b"]
    at = SUMMARY_COLUMNS.index("final_a")
    columns = SUMMARY_COLUMNS[:at] + params + SUMMARY_COLUMNS[at + 2 :]
    summary = pd.DataFrame(rows, columns=columns)
    floats = [*FLOAT_COLUMNS, *params]
    summary = summary.astype(dict.fromkeys(floats, float) | dict.fromkeys(INT_COLUMNS, "Int64"))
    # result.json writes a non-finite loss as null: such a job ranks, and prints, as inf.
    summary["final_loss"] = summary["final_loss"].fillna(math.inf)
    summary["reused"] = summary["reused"].astype("boolean").fillna(False).astype(bool)
    return rank(summary)


def _job_row(job_dir: Path) -> dict[str, Any] | None:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():  # not a job of this sweep
        return None
    row: dict[str, Any] = {
        "job": int(job_dir.name),
        "overrides": " ".join(OmegaConf.load(overrides_file)),
    }
    result_file = job_dir / "result.json"
    if not result_file.is_file():  # the job died before it could say how it ended
        return row | {"status": "FAILED"}
    result = json.loads(result_file.read_text())  # also reads the older Infinity / NaN
    return row | {k: v for k, v in result.items() if k != "final"} | (result.get("final") or {})


def sweep_plots(summary: pd.DataFrame, sweep_dir: Path, top: int = 10) -> list[Path]:
    """final_loss_vs_lr.png (when lr was swept) and losses.png in the sweep directory."""
    paths = []
    if summary["lr"].nunique() > 1:
        paths.append(save(draw_final_loss_vs_lr(summary), sweep_dir / "final_loss_vs_lr.png"))
    curves = job_curves(summary, sweep_dir, top)
    title = f"Loss per epoch, best {len(curves)} of {len(summary)} jobs"
    plot_loss_curves(curves, sweep_dir / "losses.png", title)
    paths.append(sweep_dir / "losses.png")
    return paths


def job_curves(summary: pd.DataFrame, sweep_dir: Path, top: int) -> list[Curve]:
    """The loss curves of the first `top` jobs of the summary that wrote a metrics.csv."""
    curves = []
    for row in summary.itertuples(index=False):
        csv = sweep_dir / str(row.job) / "metrics.csv"
        if len(curves) < top and csv.is_file():
            history = pd.read_csv(csv, usecols=["epoch", "loss"])
            curves.append(
                (row.overrides, history["epoch"].to_numpy(), history["loss"].to_numpy(), row.status)
            )
    return curves


def draw_final_loss_vs_lr(summary: pd.DataFrame) -> Figure:
    """Final loss against lr, log-log; diverged jobs as crosses at the top; the stability
    limit 2/λmax as a vertical line."""
    fig, ax = _figure()
    done = summary[summary["status"] == "FINISHED"]
    ax.plot(done["lr"], done["final_loss"], "o", label="finished")
    diverged = summary[summary["status"] == "DIVERGED"]
    if len(diverged):  # their loss is inf, which a log axis cannot show
        ceiling = done["final_loss"].max() if len(done) else 1.0
        ax.plot(diverged["lr"], np.full(len(diverged), ceiling), "x", color="C3",
                markersize=9, label="diverged (drawn at the top)")  # fmt: skip
    limit = summary["stable_lr_max"].dropna()
    if len(limit):
        ax.axvline(limit.iloc[0], color="C3", linestyle="--",
                   label=f"stability limit 2/λmax = {limit.iloc[0]:.4g}")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="lr (log scale)", ylabel="final loss (log scale)",
           title="Final loss against learning rate")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def plot_loss_curves(curves: list[Curve], path: Path, title: str) -> int:
    """Write the loss curves as a PNG; return how many lines were drawn."""
    fig = draw_loss_curves(curves, title)
    save(fig, path)
    return len(fig.axes[0].get_lines())


def draw_loss_curves(curves: list[Curve], title: str) -> Figure:
    """Per-epoch loss of several runs on a log axis, diverged ones dashed. The y-axis ends
    a decade above the runs that did not diverge, so one run that blew up to 1e30 does not
    flatten every other curve into the bottom edge."""
    fig, ax = _figure()
    for label, epochs, losses, status in curves:
        if len(losses):
            shown = label if status == "FINISHED" else f"{label} ({status.lower()})"
            ax.plot(epochs, losses, "--" if status == "DIVERGED" else "-", label=shown)
    ax.set(yscale="log", xlabel="epoch", ylabel="loss (MSE, log scale)", title=title)
    if limits := _loss_limits(curves):
        ax.set_ylim(*limits)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small", loc="upper right")
    return fig


def _loss_limits(curves: list[Curve]) -> tuple[float, float] | None:
    def positive(keep: Any) -> np.ndarray:
        values = [np.asarray(c[2], float) for c in curves if keep(c[3])] or [np.empty(0)]
        every = np.concatenate(values)
        return every[np.isfinite(every) & (every > 0)]

    shown, steady = positive(lambda s: True), positive(lambda s: s != "DIVERGED")
    if not len(shown):
        return None
    top = steady.max() * 10 if len(steady) else shown.max() * 2
    return shown.min() / 2, top


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _figure() -> tuple[Figure, Any]:
    # A bare Figure, not pyplot: no global figure list to leak, no display backend needed
    # (also in worker processes); savefig renders through Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=WIDE, layout="constrained")
    return fig, fig.subplots()
