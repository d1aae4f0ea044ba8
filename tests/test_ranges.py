"""runner/ranges.py and the grid sweeper: float ranges in decimal, integer ranges as Hydra's."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.runner_sweeper import grid
from runner.config import ConfigError
from runner.ranges import float_range


def _values(text: str) -> list[str] | None:
    (o,) = OverridesParser.create().parse_overrides([text])
    return float_range(o)


@pytest.mark.parametrize(
    ("text", "values"),
    [("lr=range(0.01,0.05,0.01)", ["0.01", "0.02", "0.03", "0.04"]),  # Hydra: five, 0.0500..01
     ("lr=range(0.1,0.35,0.05)", ["0.1", "0.15", "0.2", "0.25", "0.3"]),
     ("lr=range(1.0,3.0,0.5)", ["1.0", "1.5", "2.0", "2.5"]),
     ("lr=range(0,1,0.25)", ["0.0", "0.25", "0.5", "0.75"]),
     ("lr=range(1e-3,4e-3,1e-3)", ["0.001", "0.002", "0.003"]),
     ("x=range(0.3,0,-0.1)", ["0.3", "0.2", "0.1"]),
     ("lr=range(0.5,0.5,0.1)", [])],
)  # fmt: skip
def test_a_float_range_is_stepped_in_decimal_without_its_stop(text: str, values: list) -> None:
    assert _values(text) == values


def test_hydras_float_range_would_have_made_a_fifth_job() -> None:
    (o,) = OverridesParser.create().parse_overrides(["lr=range(0.01,0.05,0.01)"])
    assert len(list(o.sweep_iterator())) == 5  # why this module exists


def test_integer_ranges_lists_and_shuffles_keep_their_meaning() -> None:
    assert _values("epochs=range(1,4)") is None and _values("lr=0.1,0.2") is None
    assert grid(["epochs=range(1,4)", "lr=0.1,0.2"]) == [
        [f"epochs={e}", f"lr={lr}"] for e in (1, 2, 3) for lr in ("0.1", "0.2")]  # fmt: skip
    shuffled = _values("lr=shuffle(range(0.01,0.1,0.01))")
    assert sorted(shuffled) == [f"0.0{i}" for i in range(1, 10)]


def test_the_grid_writes_the_values_as_typed() -> None:
    assert grid(["lr=range(0.01,0.05,0.01)", "seed=0"]) == [
        ["lr=0.01", "seed=0"], ["lr=0.02", "seed=0"], ["lr=0.03", "seed=0"],
        ["lr=0.04", "seed=0"]]  # fmt: skip


def test_a_step_of_zero_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match=r"^lr='range\(0.1,0.2,0\)' is not allowed: a range"):
        _values("lr=range(0.1,0.2,0)")
