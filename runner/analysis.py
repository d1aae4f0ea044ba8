"""What the data alone says about the problem, in float64: the exact least-squares
optimum, and the largest learning rate at which plain gradient descent is stable.

The loss is L(a, b) = mean((a*x + b - y)^2), a quadratic with the constant Hessian
H = 2/N [[sum x^2, sum x], [sum x, N]] (just 2/N sum x^2 without the bias). Gradient
descent with step lr converges exactly when lr < 2 / lambda_max(H).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Optimum:
    params: dict[str, float]  # a*, b* (b* only with a bias)
    loss: float  # the minimal loss
    stable_lr_max: float  # 2 / lambda_max of the Hessian; inf when the data are all zero


def design(x: np.ndarray, bias: bool) -> np.ndarray:
    x64 = x.astype(np.float64)
    return np.stack([x64, np.ones_like(x64)], axis=1) if bias else x64[:, None]


def optimum(x: np.ndarray, y: np.ndarray, bias: bool) -> Optimum:
    """The exact minimizer (the smallest one when several fit equally well, e.g. one point)."""
    X = design(x, bias)
    y64 = y.astype(np.float64)
    solution, *_ = np.linalg.lstsq(X, y64, rcond=None)
    loss = float(np.mean((X @ solution - y64) ** 2))
    hessian = 2.0 / len(y64) * X.T @ X
    largest = float(np.linalg.eigvalsh(hessian)[-1])
    names = ("a", "b") if bias else ("a",)
    return Optimum(
        params={n: float(v) for n, v in zip(names, solution, strict=True)},
        loss=loss,
        stable_lr_max=2.0 / largest if largest > 0 else float("inf"),
    )


def add_distances(chunk: pd.DataFrame, best: Optimum) -> pd.DataFrame:
    """Per epoch: how far the loss is above the optimum, and the parameters from it."""
    gap = chunk["loss"] - best.loss
    squares = sum((chunk[name] - value) ** 2 for name, value in best.params.items())
    return chunk.assign(gap=gap, distance=np.sqrt(squares))
