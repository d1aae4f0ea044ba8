"""Data: the config's points as float32 arrays, then as tensors on the run's device.

`load_arrays` needs no torch, so the command line checks a CSV before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runner.config import ConfigError, DataConfig

if TYPE_CHECKING:
    import torch


def load_arrays(data: DataConfig, seed: int, base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The points (x, y) as float32 arrays; relative CSV paths are taken from base_dir."""
    x, y = _arrays(data, seed, base_dir)
    for name, values in (("x", x), ("y", y)):
        if not np.isfinite(values).all():  # e.g. 1e39 from a CSV, or true_a * x overflowing
            row = int(np.argmin(np.isfinite(values)))
            allowed = f"points that are finite in float32 ({name}[{row}] is not)"
            raise ConfigError("data", data.kind.value, allowed)
    return x, y


def _arrays(data: DataConfig, seed: int, base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    if data.kind == "inline":
        x = np.asarray(data.x, dtype=np.float32)
        if data.y is not None:
            return x, np.asarray(data.y, dtype=np.float32)
        # Computed in float32, as the notebooks compute y from the true parameters with torch.
        return x, np.float32(data.true_a) * x + np.float32(data.true_b)
    if data.kind == "synthetic":
        rng = np.random.default_rng(seed if data.seed is None else data.seed)
        x = rng.uniform(-1.0, 1.0, data.n)
        y = data.true_a * x + data.true_b + data.noise * rng.standard_normal(data.n)
        return x.astype(np.float32), y.astype(np.float32)
    return _read_csv(base_dir / str(data.path))


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    shown = str(path)
    if not path.is_file():
        raise ConfigError("data.path", shown, "an existing CSV file with columns x and y")
    try:
        # As text, so an error can quote the cell exactly as the file has it.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError("data.path", shown, f"a readable CSV ({first_line})") from None
    missing = [c for c in ("x", "y") if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise ConfigError("data.path", shown, f"columns x and y (missing {missing}; found {found})")
    if frame.empty:
        raise ConfigError("data.path", shown, "at least one row of x, y")
    columns = []
    for name in ("x", "y"):
        values = pd.to_numeric(frame[name], errors="coerce")
        with np.errstate(over="ignore"):  # a number too large for float32 becomes inf: refused
            bad = ~np.isfinite(values.to_numpy(dtype=np.float64).astype(np.float32))
        if bad.any():
            row = int(np.argmax(bad))
            held = str(frame[name].iloc[row])
            allowed = f"finite numbers in column {name} (data row {row + 1} holds {held!r})"
            raise ConfigError("data.path", shown, allowed)
        columns.append(values.to_numpy(dtype=np.float32))
    return columns[0], columns[1]


def split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """(training points, validation points): round(fraction * n) points drawn with the seed
    are held out, the rest keep their order; no split for a fraction of 0."""
    if not fraction:
        return (x, y), None
    held = round(fraction * len(x))
    if not 1 <= held < len(x):
        allowed = f"a share that leaves both sets a point ({len(x)} points: {held} held out)"
        raise ConfigError("data.val_fraction", fraction, allowed)
    order = np.random.default_rng(seed).permutation(len(x))
    val = np.sort(order[:held])
    train = np.sort(order[held:])
    return (x[train], y[train]), (x[val], y[val])


def to_tensors(
    x: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the points to the device once; the loop never copies them again."""
    import torch

    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
