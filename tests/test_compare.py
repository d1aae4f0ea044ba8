"""`python -m runner.compare` on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from support import make_config

import runner.compare
from runner.app import run
from runner.compare import cast_param, main, param_types


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five runs, one of which diverges."""
    home = tmp_path_factory.mktemp("store")
    for i, lr in enumerate(["0.01", "0.05", "0.1", "0.15", "1.5"]):
        run_dir = home / str(i)
        run_dir.mkdir()
        overrides = [f"lr={lr}", "epochs=40", "optimizer=sgd"]
        run(make_config(*overrides), launch_dir=home, run_dir=run_dir, overrides=overrides)
    return home


def test_params_come_back_as_their_config_types() -> None:
    types = param_types()
    assert cast_param("0.05", types["lr"]) == 0.05
    assert cast_param("50", types["epochs"]) == 50
    assert cast_param("False", types["model.bias"]) is False
    assert cast_param("[1.0, 2.0]", types["data.x"]) == [1.0, 2.0]
    assert cast_param("None", types["data.y"]) is None
    assert cast_param("sgd", types["optimizer.name"]) == "sgd"
    assert cast_param("[0.9, 0.999]", types["optimizer.betas"]) == [0.9, 0.999]
    assert cast_param("0.18", None) == 0.18 and cast_param("abc", None) == "abc"


def test_compare_prints_writes_csv_and_plots(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(store)
    monkeypatch.setattr(runner.compare, "PAGE", 2)  # five runs over three pages
    assert main(["--csv", "runs.csv", "--plot", "loss.png", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "5 runs" in out and "plot loss.png (5 loss curves)" in out

    table = pd.read_csv(store / "runs.csv")
    assert len(table) == 5
    assert table["lr"].tolist()[:4] == [0.15, 0.1, 0.05, 0.01]  # best (lowest final loss) first
    assert table.loc[4, "lr"] == 1.5 and bool(table.loc[4, "diverged"])
    assert table.loc[4, "status"] == "FAILED" and pd.isna(table.loc[4, "final_loss"])
    assert table["epochs"].dtype.kind == "i" and table["model.bias"].dtype == bool
    assert (store / "loss.png").stat().st_size > 20_000


def test_compare_filters(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(store)
    assert main(["--filter", "params.lr = '0.1'", "--csv", "one.csv"]) == 0
    assert pd.read_csv(store / "one.csv")["lr"].tolist() == [0.1]


def test_compare_without_a_store_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("runner.compare: error: no MLflow store at") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
