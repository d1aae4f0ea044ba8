"""runner/plots.py: the pictures of one run, checked on the matplotlib figures (labels,
lines, legend) rather than on the size of a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.analysis import optimum
from runner.plots import exact_fit, run_figures, run_plots

# x: [features, points]
X002, Y002 = np.float32([[1, 2, 3]]), np.float32([1.0, 1.5, 2.0])  # y = x/2 + 1/2 exactly
X003, Y003 = np.float32([[0.5, 0.9, 1.4, 1.8]]), np.float32([2.0, 3.8, 5.0, 7.2])  # noisy


def _history(losses: list[float], a: list[float], b: list[float] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"epoch": range(len(losses)), "loss": losses, "a": a})
    return frame if b is None else frame.assign(b=b)


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_loss_picture_of_an_exact_fit_says_the_optimum_is_zero() -> None:
    best = optimum(X002, Y002, bias=True)
    history = _history([2.0, 0.5, 0.1], a=[1.0, 0.8, 0.6], b=[1.0, 0.8, 0.6])
    (ax,) = run_figures(history, X002, Y002, best, {"a": 0.55, "b": 0.52})["loss"].axes
    assert exact_fit(best, Y002)
    assert _legend(ax) == ["loss", "optimum: 0 (the line fits the data exactly)"]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "loss (MSE, log scale)"
    assert ax.get_lines()[0].get_ydata().tolist() == [2.0, 0.5, 0.1]


def test_loss_picture_shows_the_held_out_and_the_batch_losses_when_there_are_some() -> None:
    best = optimum(X003, Y003, bias=True)
    history = _history([3.0, 1.0, 0.5], a=[1.0, 1.5, 2.0], b=[1.0, 0.5, 0.2])
    history = history.assign(val_loss=[3.5, 1.4, 0.9], train_loss_mean=[2.5, 0.9, 0.6])
    (ax,) = run_figures(history, X003, Y003, best, {"a": 2.1, "b": 0.1})["loss"].axes
    assert _legend(ax) == ["loss", f"optimum {best.loss:.4g}", "mean batch loss",
                           "val_loss (held out)"]  # fmt: skip
    assert ax.get_lines()[3].get_ydata().tolist() == [3.5, 1.4, 0.9]
    assert ax.get_lines()[2].get_ydata().tolist() == [2.5, 0.9, 0.6]


def test_loss_picture_of_a_diverged_run_shows_the_true_optimum() -> None:
    # The old test compared the optimum with 1e-12 x the history's largest loss, which a
    # diverged run makes huge: it said "optimum: 0" for an optimum well above 0.
    best = optimum(X003, Y003, bias=True)
    assert best.loss > 0.01 and not exact_fit(best, Y003)
    history = _history([30.0, 1e20, 1e36], a=[1.0, -1e9, 1e17], b=[1.0, -1e9, 1e17])
    (ax,) = run_figures(history, X003, Y003, best, {"a": -1e26, "b": -1e26})["loss"].axes
    assert _legend(ax) == ["loss", f"optimum {best.loss:.4g}"]
    optimum_line = ax.get_lines()[1]
    assert optimum_line.get_ydata()[0] == best.loss and optimum_line.get_linestyle() == "--"


def test_exact_fit_is_judged_on_the_data_scale() -> None:
    tiny = np.float32([1e-8, 2e-8, 3e-8])  # small data: a small optimum is not rounding
    best = optimum(np.float32([[1, 2, 3]]), tiny + np.float32([0, 1e-9, 0]), bias=True)
    assert 0 < best.loss < 1e-12 and not exact_fit(best, tiny)
    zeros = np.zeros(3, np.float32)
    assert exact_fit(optimum(X002, zeros, bias=True), zeros)


def test_fit_and_trajectory_pictures_of_a_and_b() -> None:
    best = optimum(X002, Y002, bias=True)
    history = _history([2.0, 0.5, 0.1], a=[1.0, 0.8, 0.6], b=[1.0, 0.8, 0.6])
    figures = run_figures(history, X002, Y002, best, {"a": 0.55, "b": 0.52})
    assert list(figures) == ["loss", "fit", "trajectory"]
    (fit,) = figures["fit"].axes
    assert fit.get_xlabel() == "x" and fit.get_ylabel() == "y"
    assert _legend(fit) == ["data", "fitted: a=0.55, b=0.52", "exact: a*=0.5, b*=0.5"]
    trajectory = figures["trajectory"].axes[0]  # the second axis is the colorbar
    assert (trajectory.get_xlabel(), trajectory.get_ylabel()) == ("a", "b")
    assert _legend(trajectory) == ["gradient descent", "start", "optimum"]
    path = trajectory.get_lines()[0]
    assert path.get_xdata().tolist() == [1.0, 0.8, 0.6, 0.55]  # ends where the run ended


def test_trajectory_of_one_parameter_follows_the_loss_curve() -> None:
    x, y = np.float32([[2]]), np.float32([3])  # seed 000: y = theta * x
    best = optimum(x, y, bias=False)
    history = _history([4.0, 1.0], a=[0.5, 1.0])
    (ax,) = run_figures(history, x, y, best, {"a": 1.25})["trajectory"].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("a", "loss")
    assert _legend(ax) == ["loss(a)", "gradient descent", "optimum"]
    steps = ax.get_lines()[1]
    assert steps.get_ydata().tolist() == [4.0, 1.0, 0.25]  # (2a - 3)^2 at each step


def test_run_plots_writes_the_three_pngs(tmp_path: Path) -> None:
    best = optimum(X002, Y002, bias=True)
    history = _history([2.0, 0.5], a=[1.0, 0.8], b=[1.0, 0.8])
    paths = run_plots(history, X002, Y002, best, {"a": 0.6, "b": 0.6}, tmp_path)
    assert [p.name for p in paths] == ["loss.png", "fit.png", "trajectory.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_k_features_draw_the_path_of_each_parameter_to_its_optimum(tmp_path: Path) -> None:
    x = np.float32([[1, 2, 3, 4], [1, 0, 1, 0]])  # two features: no line, no (a, b) plane
    y = np.float32([2, 2, 4, 4])
    best = optimum(x, y, bias=True)
    history = pd.DataFrame({"epoch": [0, 1], "loss": [3.0, 1.0], "w1": [0.0, 0.5],
                            "w2": [0.0, 0.2], "b": [0.0, 0.1]})  # fmt: skip
    figures = run_figures(history, x, y, best, {"w1": 0.7, "w2": 0.3, "b": 0.2})
    assert list(figures) == ["loss", "parameters"]
    (ax,) = figures["parameters"].axes
    assert _legend(ax) == ["w1", "w2", "b", "optimum (least squares)"]
    assert ax.get_lines()[0].get_ydata().tolist() == [0.0, 0.5, 0.7]  # ends where it ended
    optimum_w2 = list(ax.get_lines()[3].get_ydata())
    assert optimum_w2 == [best.params["w2"]] * 2  # the dashed line at its optimum
    assert "condition number" in ax.get_title()
    paths = run_plots(history, x, y, best, {"w1": 0.7, "w2": 0.3, "b": 0.2}, tmp_path)
    assert [p.name for p in paths] == ["loss.png", "parameters.png"]
