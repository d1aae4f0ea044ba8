"""What the data alone says about the problem, in float64: the exact least-squares
optimum, the largest learning rate at which plain gradient descent is stable, and how
ill-conditioned the problem is.

The loss is L(w, b) = mean((w . x + b - y)^2), a quadratic with the constant Hessian
H = 2/N X^T X, where X holds one row [x_1 .. x_k, 1] per point (no 1 without the bias);
for one feature, H = 2/N [[sum x^2, sum x], [sum x, N]]. Gradient descent with step lr
converges exactly when lr < 2 / lambda_max(H), and along the direction of lambda_min it
moves lambda_max / lambda_min (the condition number) times slower than along the fastest:
correlated features make that number large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from runner.data import weight_names


@dataclass(frozen=True)
class Optimum:
    params: dict[str, float]  # the weights (a, or w1..wk), then b (with a bias)
    loss: float  # the minimal loss
    stable_lr_max: float  # 2 / lambda_max of the Hessian; inf when the data are all zero
    condition: float  # lambda_max / lambda_min of the Hessian; inf when it is singular


def design(x: np.ndarray, bias: bool) -> np.ndarray:
    """X: one row per point, one column per feature, then a column of ones (the bias)."""
    x64 = x.astype(np.float64).T
    return np.column_stack([x64, np.ones(len(x64))]) if bias else x64


def optimum(x: np.ndarray, y: np.ndarray, bias: bool) -> Optimum:
    """The exact minimizer (the smallest one when several fit equally well, e.g. one point)."""
    X = design(x, bias)
    y64 = y.astype(np.float64)
    solution, *_ = np.linalg.lstsq(X, y64, rcond=None)
    loss = float(np.mean((X @ solution - y64) ** 2))
    eigenvalues = np.linalg.eigvalsh(2.0 / len(y64) * X.T @ X)
    smallest, largest = float(eigenvalues[0]), float(eigenvalues[-1])
    # An eigenvalue at float64 rounding of 0 is 0: a direction the loss does not see.
    singular = smallest <= largest * len(eigenvalues) * np.finfo(np.float64).eps
    names = weight_names(len(x)) + (["b"] if bias else [])
    return Optimum(
        params={n: float(v) for n, v in zip(names, solution, strict=True)},
        loss=loss,
        stable_lr_max=2.0 / largest if largest > 0 else float("inf"),
        condition=float("inf") if singular else largest / smallest,
    )


def add_distances(chunk: pd.DataFrame, best: Optimum) -> pd.DataFrame:
    """Per epoch: how far the loss is above the optimum, and the parameters from it."""
    # On the columns' arrays: a job's every chunk passes here, and pandas' arithmetic on
    # Series costs more than the numbers (half the time, with the same values).
    squares = sum((chunk[name].to_numpy() - value) ** 2 for name, value in best.params.items())
    out = chunk.copy(deep=False)
    out["gap"] = chunk["loss"].to_numpy() - best.loss
    out["distance"] = np.sqrt(squares)
    return out
