"""Pictures of what gradient descent did, as PNG files (matplotlib, no display needed).

One run: the loss per epoch against the optimum, the data with the fitted and the exact
line, and the path of the parameters over the loss surface. A sweep: final loss against
lr with the stability limit, and the loss curves of its jobs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.analysis import Optimum, design

MAX_POINTS = 2000  # scatter at most this many data points; a line does not need more
WIDE = (8, 5)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, also in worker processes
    import matplotlib.pyplot as plt

    return plt


def run_plots(
    history: pd.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    best: Optimum,
    final: dict[str, float],
    out_dir: Path,
) -> list[Path]:
    """loss.png, fit.png and trajectory.png in out_dir; returns their paths.

    `final` holds the parameters the run ended with (the last row of the history holds
    the ones before the last step).
    """
    plt = _pyplot()
    paths = [out_dir / "loss.png", out_dir / "fit.png", out_dir / "trajectory.png"]
    for draw, path in zip((_loss, _fit, _trajectory), paths, strict=True):
        fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
        draw(ax, history, x, y, best, final)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return paths


def _loss(ax, history: pd.DataFrame, x, y, best: Optimum, final: dict) -> None:
    ax.plot(history["epoch"], history["loss"], label="loss")
    if best.loss > 1e-12 * max(1.0, float(history["loss"].max())):
        ax.axhline(best.loss, color="C3", linestyle="--", label=f"optimum {best.loss:.4g}")
    else:  # an exact fit: the optimum is 0, which a log axis cannot show
        ax.plot([], [], " ", label="optimum: 0 (the line fits the data exactly)")
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss (MSE, log scale)", title="Loss per epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def _fit(ax, history: pd.DataFrame, x, y, best: Optimum, final: dict) -> None:
    many = len(x) > MAX_POINTS
    shown = np.random.default_rng(0).choice(len(x), MAX_POINTS, replace=False) if many else ...
    ax.scatter(x[shown], y[shown], s=14, color="0.6", label="data", zorder=1)
    grid = np.linspace(min(x.min(), 0.0), x.max(), 100)
    a, b = final["a"], final.get("b", 0.0)
    ax.plot(grid, a * grid + b, linewidth=2, label=f"fitted: a={a:.4g}, b={b:.4g}")
    a_star, b_star = best.params["a"], best.params.get("b", 0.0)
    ax.plot(grid, a_star * grid + b_star, "--", label=f"exact: a*={a_star:.4g}, b*={b_star:.4g}")
    ax.set(xlabel="x", ylabel="y", title=f"Data, fitted line and exact line ({len(x)} points)")
    ax.grid(True, alpha=0.3)
    ax.legend()


def _trajectory(ax, history: pd.DataFrame, x, y, best: Optimum, final: dict) -> None:
    X, y64 = design(x, "b" in best.params), y.astype(np.float64)
    a = np.append(history["a"].to_numpy(), final["a"])  # the path ends where the run ended
    if "b" not in best.params:  # one parameter: the loss curve and the steps along it
        span = _span(np.append(a, best.params["a"]))
        grid = np.linspace(*span, 300)
        curve = np.mean((np.outer(grid, X[:, 0]) - y64) ** 2, axis=1)
        ax.plot(grid, curve, color="0.5", label="loss(a)")
        losses = np.mean((np.outer(a, X[:, 0]) - y64) ** 2, axis=1)
        ax.plot(a, losses, "o-", markersize=3, label="gradient descent")
        ax.plot(best.params["a"], best.loss, "*", markersize=14, color="C3", label="optimum")
        ax.set(xlabel="a", ylabel="loss", title="Path of the parameter over the loss")
    else:
        b = np.append(history["b"].to_numpy(), final["b"])
        ga, gb = np.meshgrid(
            np.linspace(*_span(np.append(a, best.params["a"])), 200),
            np.linspace(*_span(np.append(b, best.params["b"])), 200),
        )
        # mean((a x + b - y)^2) on the grid, from the data's sums (any number of points).
        n, sx, sy = len(y64), X[:, 0].sum(), y64.sum()
        sxx, sxy, syy = (X[:, 0] ** 2).sum(), (X[:, 0] * y64).sum(), (y64**2).sum()
        surface = (
            ga**2 * sxx + 2 * ga * gb * sx + n * gb**2 - 2 * ga * sxy - 2 * gb * sy + syy
        ) / n
        levels = np.geomspace(max(surface.min(), 1e-12), surface.max(), 25)
        contour = ax.contour(ga, gb, surface, levels=levels, cmap="viridis", linewidths=0.8)
        ax.figure.colorbar(contour, ax=ax, label="loss", format="%.0e")
        ax.plot(a, b, "o-", color="C1", markersize=2.5, linewidth=1, label="gradient descent")
        ax.plot(a[0], b[0], "s", color="C1", label="start")
        ax.plot(best.params["a"], best.params["b"], "*", markersize=14, color="C3", label="optimum")
        ax.set(xlabel="a", ylabel="b", title="Path of (a, b) over the loss contours")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")


def _span(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.15 * (hi - lo) or 0.5
    return lo - pad, hi + pad


def sweep_plots(summary: pd.DataFrame, sweep_dir: Path, top: int = 10) -> list[Path]:
    """final_loss_vs_lr.png (when lr was swept) and losses.png in the sweep directory."""
    plt = _pyplot()
    paths = []
    if summary["lr"].nunique() > 1:
        fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
        done = summary[summary["status"] == "FINISHED"]
        ax.plot(done["lr"], done["final_loss"], "o", label="finished")
        diverged = summary[summary["status"] == "DIVERGED"]
        if len(diverged):
            ceiling = done["final_loss"].max() if len(done) else 1.0
            ax.plot(diverged["lr"], np.full(len(diverged), ceiling), "x", color="C3",
                    markersize=9, label="diverged (drawn at the top)")  # fmt: skip
        limit = summary["stable_lr_max"].dropna()
        if len(limit):
            ax.axvline(limit.iloc[0], color="C3", linestyle="--",
                       label=f"stability limit 2/λmax = {limit.iloc[0]:.4g}")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="lr (log scale)", ylabel="final loss (log)")
        ax.set_title("Final loss against learning rate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        paths.append(sweep_dir / "final_loss_vs_lr.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
    for row in summary.head(top).itertuples(index=False):
        csv = sweep_dir / str(row.job) / "metrics.csv"
        if csv.is_file():
            history = pd.read_csv(csv, usecols=["epoch", "loss"])
            ax.plot(history["epoch"], history["loss"], label=f"{row.overrides} ({row.status})")
    ax.set(yscale="log", xlabel="epoch", ylabel="loss (log scale)",
           title=f"Loss per epoch, best {min(top, len(summary))} jobs")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    paths.append(sweep_dir / "losses.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
