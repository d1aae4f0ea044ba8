"""runner/store.py: the store's address and run names."""

from __future__ import annotations

import pytest

from runner.store import run_name


@pytest.mark.parametrize(
    ("overrides", "name"),
    [(["optimizer=sgd", "lr=0.05"], "optimizer=sgd,lr=0.05"),
     (["lr=0.012345678901234567", "search=optuna_lr", "hydra.sweeper.n_trials=8"], "lr=0.01235"),
     (["lr=0.060000000000000005", "seed=123456789012"], "lr=0.06,seed=123456789012"),
     (["mlflow.tracking_uri=http://h:5000", "data.path=points.csv"], "data.path=points.csv"),
     ([], "defaults")],
)  # fmt: skip
def test_run_names_say_what_was_tried_in_short(overrides: list[str], name: str) -> None:
    assert run_name(overrides) == name
