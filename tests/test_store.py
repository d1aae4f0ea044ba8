"""runner/store.py: the store's address and run names."""

from __future__ import annotations

import pytest

from runner.store import password_problem, redact, redact_text, run_name


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


URLS = [  # (url, holds a password)
    ("http://alice:S3cr3t@mlflow:5000", True),
    ("http://alice:p@ss/w0rd@mlflow:5000", True),  # a password holding @ and /
    ("postgresql+psycopg2://alice:S3cr3t@db/optuna", True),
    ("postgresql://alice@db/optuna", False),  # a user alone: PGPASSWORD or ~/.pgpass
    ("http://mlflow:5000", False),
    ("sqlite:////tmp/mlflow.db", False),
]


@pytest.mark.parametrize(("url", "secret"), URLS)
def test_one_rule_finds_a_password_in_any_url_and_hides_it(url: str, secret: bool) -> None:
    assert (password_problem(url, "storage") is not None) == secret
    for shown in (redact(url), redact_text(f"python -m runner 'x={url}' lr=0.1")):
        assert "S3cr3t" not in shown and "w0rd" not in shown
    assert redact_text("lr=0.1 seed=3") == "lr=0.1 seed=3"
