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
    "pruned_at_epoch",  # a search's trial its pruner stopped (status PRUNED)
    "mlflow_run_id",
]
# Best first: finished runs (by final loss), then the ones that ran off, were stopped, broke.
STATUS_ORDER = {"FINISHED": 0, "PRUNED": 1, "DIVERGED": 2, "KILLED": 3, "FAILED": 4}
INT_COLUMNS = ("epochs_run", "diverged_at_epoch", "converged_at_epoch", "stalled_at_epoch",
               "pruned_at_epoch")  # fmt: skip
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


def summarize(sweep_dir: Path, unended: str = "FAILED") -> pd.DataFrame:
    """One row per job directory `<sweep_dir>/<N>/` (SUMMARY_COLUMNS, with the jobs' own
    parameter columns where they are not a and b), ranked best first. A job that never said
    how it ended has status `unended`: FAILED (it died), KILLED (the sweep was stopped)."""
    rows = [_job_row(d, unended) for d in sweep_dir.iterdir() if d.name.isdigit()]
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
    ranked = rank(summary)
    # Why MLflow failed jobs (their CSVs went on alone): the sweep says so in one line.
    ranked.attrs["tracking_errors"] = [r["tracking_error"] for r in rows if r.get("tracking_error")]
    return ranked


def _job_row(job_dir: Path, unended: str) -> dict[str, Any] | None:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():  # not a job of this sweep
        return None
    row: dict[str, Any] = {
        "job": int(job_dir.name),
        "overrides": " ".join(OmegaConf.load(overrides_file)),
    }
    result_file = job_dir / "result.json"
    if not result_file.is_file():  # the job did not get to say how it ended
        return row | {"status": unended}
    result = json.loads(result_file.read_text())  # also reads the older Infinity / NaN
    return row | {k: v for k, v in result.items() if k != "final"} | (result.get("final") or {})


def sweep_plots(summary: pd.DataFrame, sweep_dir: Path, top: int = 10) -> list[Path]:
    """final_loss_vs_lr.png (when lr was swept) and losses.png in the sweep directory."""
    paths = []
    if summary["lr"].nunique() > 1:
        figure = draw_final_loss_vs_lr(summary, _start_loss(summary, sweep_dir))
        paths.append(save(figure, sweep_dir / "final_loss_vs_lr.png"))
    curves = job_curves(summary, sweep_dir, top)
    title = f"Loss per epoch, best {len(curves)} of {len(summary)} jobs"
    plot_loss_curves(curves, sweep_dir / "losses.png", title)
    paths.append(sweep_dir / "losses.png")
    return paths


def _start_loss(summary: pd.DataFrame, sweep_dir: Path) -> float | None:
    """The highest epoch-0 loss of the sweep's jobs (they may start from different points)."""
    starts = []
    for job in summary["job"]:
        csv = sweep_dir / str(job) / "metrics.csv"
        if csv.is_file():
            with csv.open() as lines:  # the header and epoch 0 (loss is the second column)
                first = lines.readline(), lines.readline()
            if first[0].startswith("epoch,loss,") and first[1]:
                starts.append(float(first[1].split(",")[1] or "nan"))
    finite = [v for v in starts if np.isfinite(v)]
    return max(finite) if finite else None


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


def series_labels(overrides: pd.Series) -> pd.Series:
    """Each job's values of the settings swept besides lr (`optimizer=sgd seed=1`), which
    tell the series of a sweep apart; "" for every job when lr alone was swept."""
    settings = [dict(o.split("=", 1) for o in text.split() if "=" in o) for text in overrides]
    keys = dict.fromkeys(k for job in settings for k in job)
    swept = [k for k in keys if k != "lr" and len({job.get(k) for job in settings}) > 1]
    labels = [" ".join(f"{k}={job.get(k)}" for k in swept) for job in settings]
    return pd.Series(labels, index=overrides.index, dtype=str)


def draw_final_loss_vs_lr(summary: pd.DataFrame, start_loss: float | None = None) -> Figure:
    """Final loss against lr, log-log, one series per combination of the other swept
    settings; the stability limit 2/λmax as a vertical line where it applies (plain
    gradient descent: summary's stable_lr_max). Jobs that diverged, or ended above the
    loss they started from (`start_loss`; else the highest finished one), are crosses at
    that height, so a run that reached 1e30 does not squash the others; a search's pruned
    trials are open triangles there."""
    fig, ax = _figure()
    done = summary[summary["status"] == "FINISHED"]
    ceiling = start_loss if start_loss is not None else done["final_loss"].max()
    ceiling = ceiling if np.isfinite(ceiling) else 1.0
    labels = series_labels(summary["overrides"])
    for i, (label, jobs) in enumerate(summary.groupby(labels, sort=False)):
        color = f"C{i % 10}"
        finished = jobs["status"] == "FINISHED"
        ok = jobs[finished & (jobs["final_loss"] <= ceiling)].sort_values("lr")
        ax.plot(ok["lr"], ok["final_loss"], "o-", color=color, markersize=4,
                label=label or "finished")  # fmt: skip
        diverged = jobs[(jobs["status"] == "DIVERGED") | (finished & ~jobs.index.isin(ok.index))]
        if len(diverged):  # an inf loss, which a log axis cannot show, or one off the scale
            shown = f"{label} diverged or ended above the start (drawn there)".lstrip()
            ax.plot(diverged["lr"], np.full(len(diverged), ceiling), "x", color=color,
                    markersize=9, label=shown)  # fmt: skip
        pruned = jobs[jobs["status"] == "PRUNED"]
        if len(pruned):  # a search's trial stopped early: no final loss
            shown = f"{label} pruned (no final loss: drawn at the top)".lstrip()
            ax.plot(pruned["lr"], np.full(len(pruned), ceiling), "v", color=color,
                    markersize=7, fillstyle="none", label=shown)  # fmt: skip
    limits = summary.dropna(subset=["stable_lr_max"])
    for limit, jobs in limits.groupby("stable_lr_max"):
        names = sorted(set(labels[jobs.index]) - {""})
        which = f" ({', '.join(names)})" if names and len(names) < labels.nunique() else ""
        ax.axvline(limit, color="C3", linestyle="--",
                   label=f"stability limit 2/λmax = {limit:.4g}{which}")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="lr (log scale)", ylabel="final loss (log scale)",
           title="Final loss against learning rate")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_loss_curves(curves: list[Curve], path: Path, title: str) -> int:
    """Write the loss curves as a PNG; return how many lines were drawn."""
    fig = draw_loss_curves(curves, title)
    save(fig, path)
    return len(fig.axes[0].get_lines())


def draw_loss_curves(curves: list[Curve], title: str) -> Figure:
    """Per-epoch loss of several runs on a log axis, diverged ones dashed. The y-axis ends
    just above the highest starting loss, so one run that blew up to 1e30 does not flatten
    every other curve into the bottom edge: a curve that leaves the picture is cut there
    and marked with a cross."""
    fig, ax = _figure()
    limits = _loss_limits(curves)
    for label, epochs, losses, status in curves:
        if len(losses):
            shown = label if status == "FINISHED" else f"{label} ({status.lower()})"
            (line,) = ax.plot(epochs, losses, "--" if status == "DIVERGED" else "-", label=shown)
            above = np.flatnonzero(~(np.asarray(losses, float) <= limits[1])) if limits else []
            if len(above):  # where it leaves the picture (inf and nan included)
                ax.scatter(epochs[above[0]], limits[1], marker="x", color=line.get_color(), s=80,
                           clip_on=False, zorder=3)  # fmt: skip
    ax.set(yscale="log", xlabel="epoch", ylabel="loss (MSE, log scale)", title=title)
    if limits:
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

    shown = positive(lambda s: True)
    if not len(shown):
        return None
    starts = [float(c[2][0]) for c in curves if len(c[2]) and np.isfinite(c[2][0])]
    top = max(starts) * 2 if starts else shown.max() * 2  # (a loss at most doubles in view)
    return min(shown.min(), top / 4) / 2, top


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _figure() -> tuple[Figure, Any]:
    # A bare Figure, not pyplot: no global figure list to leak, no display backend needed
    # (also in worker processes); savefig renders through Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=WIDE, layout="constrained")
    return fig, fig.subplots()
