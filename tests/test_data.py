"""Data sources: inline lists, presets, the synthetic generator and CSV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import make_config

from runner.config import ConfigError
from runner.data import load_arrays


def _arrays(*overrides: str, base: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    conf = make_config(*overrides)
    return load_arrays(conf.data, conf.seed, base or Path.cwd())


def test_default_y_comes_from_the_true_line() -> None:
    x, y = _arrays()
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(y, [1.0, 1.5, 2.0])


def test_seed_presets() -> None:
    np.testing.assert_array_equal(_arrays("data=seed_000")[1], [3.0])
    x, y = _arrays("data=seed_003")
    np.testing.assert_array_equal(x, np.float32([0.5, 0.9, 1.4, 1.8]))
    np.testing.assert_array_equal(y, np.float32([2.0, 3.8, 5.0, 7.2]))


def test_synthetic_follows_its_line_and_seed() -> None:
    x, y = _arrays("data=synthetic", "data.n=2000", "data.noise=0", "seed=3")
    assert len(x) == 2000 and x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(y, 2.0 * x - 1.0, atol=1e-6)
    same = _arrays("data=synthetic", "data.n=2000", "seed=3")
    other = _arrays("data=synthetic", "data.n=2000", "seed=4")
    pinned = _arrays("data=synthetic", "data.n=2000", "seed=4", "data.seed=3")
    np.testing.assert_array_equal(same[0], _arrays("data=synthetic", "data.n=2000", "seed=3")[0])
    assert not np.array_equal(same[0], other[0])
    np.testing.assert_array_equal(same[0], pinned[0])  # data.seed pins the data alone


def test_csv_is_read_relative_to_the_launch_dir(tmp_path: Path) -> None:
    (tmp_path / "points.csv").write_text("x,y,comment\n1,2,a\n3,4.5,b\n")
    x, y = _arrays("data=csv", "data.path=points.csv", base=tmp_path)
    np.testing.assert_array_equal(x, [1.0, 3.0])
    np.testing.assert_array_equal(y, [2.0, 4.5])


BAD_CSV = {
    "missing column": ("x,z\n1,2\n", "missing ['y']"),
    "non-numeric cell": ("x,y\n1,2\n2,abc\n", "column y (data row 2 holds 'abc')"),
    "NaN cell": ("x,y\n1,2\nnan,3\n", "column x (data row 2"),
    "empty cell (x and y of different lengths)": ("x,y\n1,2\n2,\n", "column y (data row 2"),
    "zero rows": ("x,y\n", "at least one row"),
    "empty file": ("", "readable CSV"),
}


@pytest.mark.parametrize("case", BAD_CSV)
def test_bad_csv_is_a_config_error(tmp_path: Path, case: str) -> None:
    text, hint = BAD_CSV[case]
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ConfigError) as caught:
        _arrays("data=csv", "data.path=bad.csv", base=tmp_path)
    assert str(caught.value).startswith("data.path=")
    assert hint in str(caught.value)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="an existing CSV file"):
        _arrays("data=csv", "data.path=nope.csv", base=tmp_path)
