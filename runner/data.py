"""Data: the config's points as float32 arrays, then as tensors on the run's device.

The points are x, shape [features, points] (one row per feature, so that feature i is
the contiguous row x[i]), and y, shape [points]. One feature is column x of a CSV and
the model's a; k features are columns x1..xk and the model's w1..wk.

`load_arrays` needs no torch, so a CSV is checked before anything is written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runner.config import FEATURES_MAX, ConfigError, DataConfig

if TYPE_CHECKING:
    import torch

CSV_COLUMNS = "columns x and y, or x1..xk and y"
Points = tuple[np.ndarray, np.ndarray]  # x [features, points], y [points]
# torch's grain size: up to this many points a reduction runs on one thread in one order;
# beyond, its sums are split across the threads (runner/batch.py, runner/provenance.py).
GRAIN_SIZE = 32_768


def feature_names(k: int) -> list[str]:
    """The data's columns: x for one feature (the notebooks' y = a*x + b), else x1..xk."""
    return ["x"] if k == 1 else [f"x{i}" for i in range(1, k + 1)]


def weight_names(k: int) -> list[str]:
    """The model's weights, one per feature: a (the notebooks' slope), else w1..wk."""
    return ["a"] if k == 1 else [f"w{i}" for i in range(1, k + 1)]


def load_arrays(data: DataConfig, seed: int, base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The points (x [features, points], y [points]) as float32 arrays; relative CSV paths
    are taken from base_dir."""
    x, y = _arrays(data, seed, base_dir)
    for name, values in (("x", x), ("y", y)):
        finite = np.isfinite(values).reshape(-1, values.shape[-1]).all(axis=0)
        if not finite.all():  # e.g. 1e39 from a CSV, or true_a * x overflowing
            allowed = f"points that are finite in float32 ({name}[{int(np.argmin(finite))}] is not)"
            raise ConfigError("data", data.kind.value, allowed)
    return x, y


def _arrays(data: DataConfig, seed: int, base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    if data.kind == "inline":
        x = np.asarray(data.x, dtype=np.float32)
        if data.y is not None:
            return x[None, :], np.asarray(data.y, dtype=np.float32)
        # Computed in float32, as the notebooks compute y from the true parameters with torch.
        return x[None, :], np.float32(data.true_a) * x + np.float32(data.true_b)
    if data.kind == "synthetic":
        return _synthetic(data, seed if data.seed is None else data.seed)
    return _read_csv(base_dir / str(data.path))


def _synthetic(data: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ U(-1, 1) per feature (correlated through a shared draw), y = w . x + b + noise."""
    rng = np.random.default_rng(seed)
    k = data.features or 1
    weights = data.true_w if data.true_w is not None else [data.true_a] * k
    x = rng.uniform(-1.0, 1.0, (k, data.n))  # (one feature: the draws of the notebooks' x)
    if data.correlation:  # every two features share the part sqrt(c) u_0: correlation c
        c = data.correlation
        x = math.sqrt(1 - c) * x + math.sqrt(c) * rng.uniform(-1.0, 1.0, data.n)
    signal = sum(w * row for w, row in zip(weights, x, strict=True))  # one term: exactly w*x
    y = signal + data.true_b + data.noise * rng.standard_normal(data.n)
    return x.astype(np.float32), y.astype(np.float32)


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    shown = str(path)
    if not path.is_file():
        raise ConfigError("data.path", shown, f"an existing CSV file with {CSV_COLUMNS}")
    try:
        # As text, so an error can quote the cell exactly as the file has it.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError("data.path", shown, f"a readable CSV ({first_line})") from None
    features = _feature_columns(list(map(str, frame.columns)), shown)
    if frame.empty:
        raise ConfigError("data.path", shown, f"at least one row of {', '.join(features)}, y")
    columns = []
    for name in [*features, "y"]:
        values = pd.to_numeric(frame[name], errors="coerce")
        with np.errstate(over="ignore"):  # a number too large for float32 becomes inf: refused
            bad = ~np.isfinite(values.to_numpy(dtype=np.float64).astype(np.float32))
        if bad.any():
            row = int(np.argmax(bad))
            held = _kind_of(str(frame[name].iloc[row]), values.iloc[row])
            allowed = f"finite numbers in column {name} (data row {row + 1} holds {held})"
            raise ConfigError("data.path", shown, allowed)
        columns.append(values.to_numpy(dtype=np.float32))
    return np.stack(columns[:-1]), columns[-1]


def _feature_columns(found: list[str], shown: str) -> list[str]:
    """The columns holding the features: x, or x1..xk with none missing (y must be there
    too; other columns are left alone)."""
    numbered = [int(c[1:]) for c in found if re.fullmatch(r"x[1-9]\d*", c)]
    if "x" in found and numbered:
        found_text = _columns(found)
        raise ConfigError("data.path", shown, f"{CSV_COLUMNS}, not both (found {found_text})")
    if numbered and max(numbered) > FEATURES_MAX:  # (x99999999999 would name 1e11 columns)
        allowed = f"at most {FEATURES_MAX} feature columns (found x{max(numbered)})"
        raise ConfigError("data.path", shown, allowed)
    features = ["x"] if not numbered else [f"x{i}" for i in range(1, max(numbered) + 1)]
    missing = [c for c in [*features, "y"] if c not in found]
    if missing:
        listed = _columns(found)
        raise ConfigError("data.path", shown, f"{CSV_COLUMNS} (missing {missing}; found {listed})")
    return features


def _columns(found: list[str]) -> str:
    """The header's column names that look like names; the rest only counted, so that a
    file that is no CSV (/proc/self/environ, a key file) is never echoed."""
    names = [c for c in found if re.fullmatch(r"[A-Za-z_][\w.]{0,30}", c)][:10]
    others = len(found) - len(names)
    listed = ", ".join(names) + (f" and {others} other column(s)" if others else "")
    return listed.removeprefix(" and ") or "none"


def _kind_of(cell: str, number: float) -> str:
    """What a bad cell holds, in words: a message never echoes the file's content."""
    if not cell.strip():
        return "an empty cell"
    if math.isnan(number):
        return "no number" if cell.strip().lower() != "nan" else "nan"
    return "a number beyond float32's range" if math.isfinite(number) else "an infinity"


def split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """(training points, validation points): round(fraction * n) points drawn with the seed
    are held out, the rest keep their order; no split for a fraction of 0."""
    if not fraction:
        return (x, y), None
    n = len(y)
    held = round(fraction * n)
    if not 1 <= held < n:
        allowed = f"a share that leaves both sets a point ({n} points: {held} held out)"
        raise ConfigError("data.val_fraction", fraction, allowed)
    order = np.random.default_rng(seed).permutation(n)
    val = np.sort(order[:held])
    train = np.sort(order[held:])
    return (x[:, train], y[train]), (x[:, val], y[val])


def to_tensors(
    x: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the points to the device once; the loop never copies them again."""
    import torch

    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
