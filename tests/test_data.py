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
    np.testing.assert_array_equal(x, np.float32([[0.5, 0.9, 1.4, 1.8]]))  # [features, points]
    np.testing.assert_array_equal(y, np.float32([2.0, 3.8, 5.0, 7.2]))


def test_synthetic_follows_its_line_and_seed() -> None:
    x, y = _arrays("data=synthetic", "data.n=2000", "data.noise=0", "seed=3")
    assert x.shape == (1, 2000) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(y, 2.0 * x[0] - 1.0, atol=1e-6)
    same = _arrays("data=synthetic", "data.n=2000", "seed=3")
    other = _arrays("data=synthetic", "data.n=2000", "seed=4")
    pinned = _arrays("data=synthetic", "data.n=2000", "seed=4", "data.seed=3")
    np.testing.assert_array_equal(same[0], _arrays("data=synthetic", "data.n=2000", "seed=3")[0])
    assert not np.array_equal(same[0], other[0])
    np.testing.assert_array_equal(same[0], pinned[0])  # data.seed pins the data alone


def test_csv_is_read_relative_to_the_launch_dir(tmp_path: Path) -> None:
    (tmp_path / "points.csv").write_text("x,y,comment\n1,2,a\n3,4.5,b\n")
    x, y = _arrays("data=csv", "data.path=points.csv", base=tmp_path)
    np.testing.assert_array_equal(x, [[1.0, 3.0]])
    np.testing.assert_array_equal(y, [2.0, 4.5])


BAD_CSV = {
    "missing column": ("x,z\n1,2\n", "missing ['y']"),
    "non-numeric cell": ("x,y\n1,2\n2,abc\n", "column y (data row 2 holds no number)"),
    "NaN cell": ("x,y\n1,2\nnan,3\n", "column x (data row 2"),
    "empty cell (x and y of different lengths)": ("x,y\n1,2\n2,\n", "column y (data row 2"),
    "zero rows": ("x,y\n", "at least one row"),
    "empty file": ("", "readable CSV"),
    # a file that is no CSV (/proc/self/environ, a key file): its content is never echoed
    "not a CSV": ("SECRET=hunter2\0TOKEN=hunter2\n", "found 1 other column(s)"),
    "a secret in a cell": ("x,y\n1,hunter2\n", "column y (data row 1 holds no number)"),
    "a header naming 1e11 features": ("x99999999999,y\n1,2\n", "at most 1000 feature columns"),
}


@pytest.mark.parametrize("case", BAD_CSV)
def test_bad_csv_is_a_config_error(tmp_path: Path, case: str) -> None:
    text, hint = BAD_CSV[case]
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ConfigError) as caught:
        _arrays("data=csv", "data.path=bad.csv", base=tmp_path)
    assert str(caught.value).startswith("data.path=")
    assert hint in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="an existing CSV file"):
        _arrays("data=csv", "data.path=nope.csv", base=tmp_path)


def test_a_csv_with_columns_x1_to_xk_has_k_features(tmp_path: Path) -> None:
    (tmp_path / "k.csv").write_text("y,x2,x1,note\n1,20,10,a\n2,40,30,b\n")
    x, y = _arrays("data=csv", "data.path=k.csv", base=tmp_path)
    np.testing.assert_array_equal(x, [[10.0, 30.0], [20.0, 40.0]])  # x1, then x2
    np.testing.assert_array_equal(y, [1.0, 2.0])


@pytest.mark.parametrize(
    ("text", "hint"),
    [("x1,x3,y\n1,2,3\n", "missing ['x2']"), ("x,x1,y\n1,2,3\n", "not both"),
     ("x1,x2,y\n1,inf,3\n", "column x2 (data row 1 holds an infinity)")],
    ids=["a gap", "x and x1", "a bad cell"],
)  # fmt: skip
def test_bad_feature_columns_are_a_config_error(tmp_path: Path, text: str, hint: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ConfigError, match=r"^data\.path=") as caught:
        _arrays("data=csv", "data.path=bad.csv", base=tmp_path)
    assert hint in str(caught.value)


def test_synthetic_features_follow_true_w_and_correlate_as_asked() -> None:
    x, y = _arrays("data=synthetic", "data.n=20000", "data.features=3", "data.true_w=[1,-2,0.5]",
                   "data.noise=0", "data.correlation=0.8")  # fmt: skip
    assert x.shape == (3, 20000) and x.dtype == np.float32
    np.testing.assert_allclose(y, [1, -2, 0.5] @ x.astype(np.float64) - 1.0, atol=1e-5)
    correlations = np.corrcoef(x)[np.triu_indices(3, k=1)]
    np.testing.assert_allclose(correlations, 0.8, atol=0.02)
    apart, _ = _arrays("data=synthetic", "data.n=20000", "data.features=3")
    np.testing.assert_allclose(np.corrcoef(apart)[np.triu_indices(3, k=1)], 0.0, atol=0.03)


def test_one_synthetic_feature_keeps_the_points_of_before() -> None:
    """One feature (the default, data.features=1 or true_w=[true_a]) draws the very points
    of the one-feature generator: x ~ U(-1, 1), then the noise, from the seed."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1.0, 1.0, 50)
    y = 2.0 * x - 1.0 + 0.1 * rng.standard_normal(50)
    for extra in ([], ["data.features=1"], ["data.true_w=[2.0]"]):
        got = _arrays("data=synthetic", "data.n=50", "seed=4", *extra)
        np.testing.assert_array_equal(got[0], [x.astype(np.float32)])
        np.testing.assert_array_equal(got[1], y.astype(np.float32))
