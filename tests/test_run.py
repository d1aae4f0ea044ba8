"""A whole run in-process against a real SQLite store: CSV and MLflow hold the same
numbers, and a failing or interrupted run is never left RUNNING."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from support import make_config

import runner.run
from runner.run import RunContext, run

# A tracking process of its own (a subprocess) for every run: the end-to-end kind.
pytestmark = pytest.mark.slow


def _store(launch_dir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{launch_dir / 'mlflow.db'}")


def _only_run(launch_dir: Path) -> Run:
    client = _store(launch_dir)
    experiment = client.get_experiment_by_name("runner")
    (found,) = client.search_runs([experiment.experiment_id])
    return found


def _run(launch_dir: Path, *overrides: str) -> Path:
    run_dir = launch_dir / "out"
    run_dir.mkdir(exist_ok=True)
    run(make_config(*overrides), RunContext(launch_dir, run_dir, tuple(overrides)))
    return run_dir / "metrics.csv"


def test_csv_and_mlflow_hold_the_same_numbers(tmp_path: Path) -> None:
    csv_path = _run(tmp_path, "optimizer=sgd", "epochs=25", "chunk=10")
    csv = pd.read_csv(csv_path)
    assert csv["epoch"].tolist() == list(range(25))
    found = _only_run(tmp_path)
    client = _store(tmp_path)
    for name in ["loss", "a", "b", "grad_a", "grad_b"]:
        history = client.get_metric_history(found.info.run_id, name)
        assert [m.step for m in history] == list(range(25)), name
        assert [m.value for m in history] == csv[name].tolist(), name


def test_run_records_params_tags_final_metrics_and_artifacts(tmp_path: Path) -> None:
    _run(tmp_path, "optimizer=sgd", "lr=0.05")
    found = _only_run(tmp_path)
    assert found.info.status == "FINISHED"
    assert found.info.run_name == "optimizer=sgd,lr=0.05"
    params = found.data.params
    assert params["lr"] == "0.05" and params["optimizer.name"] == "sgd"
    assert params["data.x"] == "[1.0, 2.0, 3.0]" and params["model.bias"] == "True"
    assert found.data.tags["hydra.overrides"] == "optimizer=sgd lr=0.05"
    assert found.data.tags["hydra.output_dir"] == str(tmp_path / "out")
    metrics = {"final_loss", "final_a", "final_b", "final_gap", "final_distance"}
    assert set(found.data.metrics) >= metrics | {"loss", "grad_a", "gap", "distance"}
    assert float(params["stable_lr_max"]) == pytest.approx(0.18029485, rel=1e-6)
    assert float(params["optimum.a"]) == pytest.approx(0.5) and "optimum.loss" in params
    tags = found.data.tags
    for key in ("runner.version.torch", "runner.version.mlflow", "runner.version.hydra-core",
                "runner.python", "runner.device", "runner.command"):  # fmt: skip
        assert tags[key], key
    assert params["seed"] == "0" and params["deterministic"] == "False"
    assert (
        tags["runner.git_dirty"] in {"true", "false"}
        and len(tags["mlflow.source.git.commit"]) == 40
    )
    assert found.data.metrics["final_loss"] < found.data.metrics["loss"]  # loss: epoch 49
    artifacts = {a.path for a in _store(tmp_path).list_artifacts(found.info.run_id)}
    assert artifacts == {"config.yaml", "metrics.csv", "loss.png", "fit.png", "trajectory.png"}


def test_mlflow_disabled_writes_only_the_csv(tmp_path: Path) -> None:
    csv_path = _run(tmp_path, "mlflow.enabled=false", "epochs=3")
    assert len(pd.read_csv(csv_path)) == 3
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_a_run_that_breaks_is_ended_and_keeps_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, status: str
) -> None:
    real_train = runner.run.train

    def train_then_break(model, loss_fn, members, *args: object, **kwargs: object) -> object:
        (member,) = members

        def write_then_break(chunk: pd.DataFrame) -> None:
            member.write(chunk)
            raise error

        broken = dataclasses.replace(member, write=write_then_break)
        return real_train(model, loss_fn, [broken], *args, **kwargs)

    monkeypatch.setattr(runner.run, "train", train_then_break)
    with pytest.raises(type(error)):
        _run(tmp_path, "epochs=30", "chunk=10")
    assert _only_run(tmp_path).info.status == status
    assert pd.read_csv(tmp_path / "out" / "metrics.csv")["epoch"].tolist() == list(range(10))


def test_result_json_is_valid_json_when_the_loss_is_infinite(tmp_path: Path) -> None:
    _run(tmp_path, "lr=1.5", "plots=false")

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    result = json.loads((tmp_path / "out" / "result.json").read_text(), parse_constant=refuse)
    assert result["status"] == "DIVERGED" and result["final_loss"] is None
    assert _only_run(tmp_path).data.tags["diverged_at_epoch"] == "16"


def test_a_loss_not_finite_at_epoch_0_ends_diverged_at_0(tmp_path: Path) -> None:
    _run(tmp_path, "data.x=[1e20,2e20]", "data.y=[0,0]", "data.true_a=null", "data.true_b=null")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "DIVERGED" and result["diverged_at_epoch"] == 0
    assert pd.read_csv(tmp_path / "out" / "metrics.csv").empty  # the header, no row
    tags = _only_run(tmp_path).data.tags
    assert tags["diverged"] == "true" and tags["diverged_at_epoch"] == "0"
