"""Pictures of one run, as PNG files (matplotlib, no display needed): the loss per epoch
against the optimum, and for one feature the data with the fitted and the exact line and
the path of the parameters over the loss surface; for k features, the path of each
parameter towards its optimum. A sweep's pictures are in runner/report.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from runner.analysis import Optimum, design

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_POINTS = 2000  # scatter at most this many data points; a line does not need more
WIDE = (8, 5)  # inches, as the sweep's pictures (runner/report.py)
DPI = 110
EXACT = 1e-12  # an optimum loss this small relative to mean(y^2) is float rounding of 0


def run_plots(
    history: pd.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    best: Optimum,
    final: dict[str, float],
    out_dir: Path,
) -> list[Path]:
    """loss.png, fit.png and trajectory.png (k features: loss.png and parameters.png) in
    out_dir; returns their paths.

    `final` holds the parameters the run ended with (the last row of the history holds
    the ones before the last step).
    """
    paths = []
    for name, fig in run_figures(history, x, y, best, final).items():
        paths.append(out_dir / f"{name}.png")
        fig.savefig(paths[-1], dpi=DPI)
    return paths


def run_figures(
    history: pd.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    best: Optimum,
    final: dict[str, float],
) -> dict[str, Figure]:
    """The pictures of a run by name, not yet written. x: [features, points]."""
    from matplotlib.figure import Figure

    figures = {}
    drawings = [("loss", _loss), ("fit", _fit), ("trajectory", _trajectory)]
    if len(x) > 1:  # no line to draw through k-dimensional points, no plane of two parameters
        drawings = [("loss", _loss), ("parameters", _parameters)]
    for name, draw in drawings:
        # A bare Figure, not pyplot: nothing global to close, no display backend needed.
        fig = Figure(figsize=WIDE, layout="constrained")
        draw(fig.subplots(), history, x, y, best, final)
        figures[name] = fig
    return figures


def exact_fit(best: Optimum, y: np.ndarray) -> bool:
    """Whether the optimum loss is 0 up to rounding, judged on the data's own scale (the
    history's losses say nothing about it: a diverged run's reach 1e30)."""
    scale = float(np.mean(np.square(y.astype(np.float64))))
    return best.loss == 0.0 or best.loss <= EXACT * scale


def _loss(
    ax: Any, history: pd.DataFrame, x: np.ndarray, y: np.ndarray, best: Optimum, final: dict
) -> None:
    ax.plot(history["epoch"], history["loss"], label="loss")
    if exact_fit(best, y):  # the optimum is 0, which a log axis cannot show
        ax.plot([], [], " ", label="optimum: 0 (the line fits the data exactly)")
    else:
        ax.axhline(best.loss, color="C3", linestyle="--", label=f"optimum {best.loss:.4g}")
    if "train_loss_mean" in history:  # mini-batches: what the steps saw, on average
        ax.plot(history["epoch"], history["train_loss_mean"], alpha=0.6, label="mean batch loss")
    if "val_loss" in history:
        ax.plot(history["epoch"], history["val_loss"], color="C2", label="val_loss (held out)")
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss (MSE, log scale)", title="Loss per epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def _fit(
    ax: Any, history: pd.DataFrame, x: np.ndarray, y: np.ndarray, best: Optimum, final: dict
) -> None:
    x = x[0]  # the one feature
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


def _trajectory(
    ax: Any, history: pd.DataFrame, x: np.ndarray, y: np.ndarray, best: Optimum, final: dict
) -> None:
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


def _parameters(
    ax: Any, history: pd.DataFrame, x: np.ndarray, y: np.ndarray, best: Optimum, final: dict
) -> None:
    epochs = np.append(history["epoch"].to_numpy(), len(history))  # ... and where it ended
    for i, (name, value) in enumerate(best.params.items()):
        path = np.append(history[name].to_numpy(), final[name])
        ax.plot(epochs, path, color=f"C{i % 10}", label=name)
        ax.axhline(value, color=f"C{i % 10}", linestyle="--", linewidth=1)
    ax.plot([], [], "k--", linewidth=1, label="optimum (least squares)")
    ax.set(xlabel="epoch", ylabel="value", title=(f"Path of each parameter ({len(x)} features, "
           f"condition number {best.condition:.3g})"))  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", ncols=2 if len(best.params) > 6 else 1)


def _span(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.15 * (hi - lo) or 0.5
    return lo - pad, hi + pad
