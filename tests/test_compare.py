"""`python -m runner.compare` on a real SQLite store, written here with MLflow's client the
way the runner writes its runs (params: the flattened config as text; metrics: the loss per
epoch and the final values; a diverged run FAILED with tag diverged=true)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from omegaconf import OmegaConf

import runner.compare
from runner.compare import cast_param, fetch_runs, loss_curves, main, runs_frame
from runner.config import Config
from runner.report import draw_loss_curves

LRS = ["0.01", "0.05", "0.1", "0.15", "1.5"]  # the last one diverges


def _params(lr: str) -> dict[str, str]:
    """The config as the runner logs it: flattened, every value as text."""
    conf = OmegaConf.to_container(OmegaConf.structured(Config), enum_to_str=True)
    flat = pd.json_normalize(conf, sep=".").iloc[0].to_dict()
    flat |= {"lr": lr, "epochs": "40", "optimizer.name": "sgd", "stable_lr_max": "0.1803"}
    return {k: str(v) for k, v in flat.items()}


def _log_run(client: MlflowClient, experiment: str, lr: str, start: int) -> None:
    diverged = float(lr) > 1
    run = client.create_run(experiment, start_time=start, run_name=f"lr={lr},optimizer=sgd")
    rate = 1 - 4 * float(lr) if not diverged else 1e4  # a smaller loss for a larger lr
    losses = 2.0 * abs(rate) ** np.arange(40 if not diverged else 6)
    metrics = [Metric("loss", v, start, step) for step, v in enumerate(losses)]
    if not diverged:
        final = {"final_loss": losses[-1] * abs(rate), "final_a": 0.5, "final_b": 0.5}
        metrics += [Metric(k, v, start, 0) for k, v in final.items()]
    params = [Param(k, v) for k, v in _params(lr).items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    if diverged:
        client.set_tag(run.info.run_id, "diverged", "true")
    client.set_terminated(run.info.run_id, "FAILED" if diverged else "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _empty_store: Path) -> Path:
    """Five runs of experiment 'runner', one of which diverged."""
    home = tmp_path_factory.mktemp("store")
    shutil.copy(_empty_store, home / "mlflow.db")  # (conftest.py: MLflow's tables, made once)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.create_experiment("runner")
    start = int(time.time() * 1000)
    for i, lr in enumerate(LRS):
        _log_run(client, experiment, lr, start + i)
    return home


def test_params_come_back_as_their_config_types() -> None:
    assert cast_param("lr", "0.05") == 0.05
    assert cast_param("epochs", "50") == 50 and isinstance(cast_param("epochs", "50"), int)
    assert cast_param("model.bias", "False") is False
    assert cast_param("data.x", "[1.0, 2.0]") == [1.0, 2.0]
    assert cast_param("data.y", "None") is None
    assert cast_param("optimizer.name", "sgd") == "sgd"
    assert type(cast_param("optimizer.name", "sgd")) is str  # the value, not the enum
    assert cast_param("optimizer.betas", "[0.9, 0.999]") == [0.9, 0.999]
    assert cast_param("optimizer.eps", "1e-08") == 1e-08
    assert cast_param("stable_lr_max", "0.18") == 0.18  # outside the schema: a number...
    assert cast_param("runner.note", "abc") == "abc"  # ... or the text
    assert cast_param("data.x", "[1.0, 2.0, 3.") == "[1.0, 2.0, 3."  # cut short by MLflow
    assert cast_param("epochs", "many") == "many"  # the schema refuses it: kept as logged


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
    assert table.loc[4, "status"] == "DIVERGED" and pd.isna(table.loc[4, "final_loss"])
    assert table["epochs"].dtype.kind == "i" and table["model.bias"].dtype == bool
    assert (store / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_statuses_and_order_agree_with_the_sweep_summary(store: Path) -> None:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runner").experiment_id
    frame = runs_frame(fetch_runs(client, [experiment]))
    assert frame["status"].tolist() == ["FINISHED"] * 4 + ["DIVERGED"]
    assert frame["final_loss"].iloc[:4].is_monotonic_increasing

    (ax,) = draw_loss_curves(loss_curves(client, frame, top=5), "t").axes
    lines = ax.get_lines()
    assert [line.get_linestyle() for line in lines] == ["-"] * 4 + ["--"]
    assert lines[-1].get_label() == "lr=1.5,optimizer=sgd (diverged)"
    assert lines[0].get_xdata().tolist() == list(range(40))


def test_compare_filters(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(store)
    assert main(["--filter", "params.lr = '0.1'", "--csv", "one.csv"]) == 0
    assert pd.read_csv(store / "one.csv")["lr"].tolist() == [0.1]
    assert main(["--filter", "metrics.final_loss < 0.01", "--csv", "low.csv"]) == 0  # --help's
    assert pd.read_csv(store / "low.csv")["lr"].tolist() == [0.15, 0.1, 0.05]


@pytest.mark.parametrize("bad", ["params.lr > '0.01'", "params.lr = ", "nonsense"])
def test_a_filter_mlflow_rejects_is_one_line(
    bad: str, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(store)
    assert main(["--filter", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"runner.compare: error: MLflow rejected --filter {bad!r}: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_compare_without_a_store_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("runner.compare: error: no MLflow store at") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_compare_and_cleanup_do_not_import_each_other() -> None:
    check = (
        "import sys, runner.compare; assert 'runner.cleanup' not in sys.modules; "
        "del sys.modules['runner.compare']; import runner.cleanup; "
        "assert 'runner.compare' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
