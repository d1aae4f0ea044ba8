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


@pytest.mark.parametrize(
    ("epochs", "every", "chunk", "steps"),
    [
        (25, 10, 7, [0, 10, 20, 24]),  # the last epoch too, though not a multiple
        (21, 10, 10, [0, 10, 20]),  # the last epoch is a multiple: sent once
        (30, 4, 1000, [0, 4, 8, 12, 16, 20, 24, 28, 29]),  # one chunk
    ],
)
def test_log_every_sends_every_nth_epoch_and_the_last_while_the_csv_keeps_all(
    tmp_path: Path, epochs: int, every: int, chunk: int, steps: list[int]
) -> None:
    csv_path = _run(tmp_path, f"epochs={epochs}", f"mlflow.log_every={every}", f"chunk={chunk}")
    csv = pd.read_csv(csv_path).set_index("epoch")
    assert len(csv) == epochs
    found = _only_run(tmp_path)
    assert found.data.params["mlflow.log_every"] == str(every)
    for name in ["loss", "a", "b", "grad_a", "grad_b", "gap", "distance"]:
        history = _store(tmp_path).get_metric_history(found.info.run_id, name)
        assert [m.step for m in history] == steps, name
        assert [m.value for m in history] == csv.loc[steps, name].tolist(), name


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
    assert artifacts == {"config.yaml", "metrics.csv", "loss.png", "fit.png", "trajectory.png",
                         "model"}  # fmt: skip


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


@pytest.mark.parametrize("model", ["linear", "linear_nobias"])
def test_the_logged_model_predicts_with_the_runs_final_parameters(
    tmp_path: Path, model: str
) -> None:
    import mlflow.pyfunc
    import numpy as np

    _run(tmp_path, f"model={model}", "optimizer=sgd", "mlflow.log_model=true", "plots=false")
    found = _only_run(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model(f"runs:/{found.info.run_id}/model")
    x = np.array([1.0, 2.0, -3.5])
    predicted = loaded.predict(pd.DataFrame({"x": x}))
    result = json.loads((tmp_path / "out" / "result.json").read_text())["final"]
    expected = result["final_a"] * x + result.get("final_b", 0.0)
    np.testing.assert_array_equal(predicted, expected)  # the final parameters, exactly
    signature = loaded.metadata.signature
    assert signature.inputs.input_names() == ["x"]
    assert loaded.metadata.get_input_schema() is not None
    example = loaded.input_example
    assert example["x"].tolist() == [1.0, 2.0, 3.0]  # the training points (seed 002's x)


def test_k_features_are_named_w1_to_wk_in_the_csv_mlflow_and_the_model(tmp_path: Path) -> None:
    """A CSV with columns x1..x3: parameters w1..w3 and b everywhere, the optimum and the
    condition number as params, the parameter-path picture, and the model y = w . x + b."""
    import mlflow.pyfunc
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (20, 3))
    frame = pd.DataFrame(x, columns=["x1", "x2", "x3"]).assign(y=x @ [1.0, -2.0, 0.5] + 0.3)
    frame.to_csv(tmp_path / "k.csv", index=False)
    csv_path = _run(tmp_path, "data=csv", "data.path=k.csv", "lr=0.3", "epochs=60")
    csv = pd.read_csv(csv_path)
    assert list(csv.columns[:6]) == ["epoch", "loss", "w1", "w2", "w3", "b"]
    found = _only_run(tmp_path)
    params, metrics = found.data.params, found.data.metrics
    for name in ("w1", "w2", "w3", "b"):
        assert metrics[name] == csv[name].iloc[-1] and f"final_{name}" in metrics
        assert f"grad_{name}" in metrics and f"optimum.{name}" in params
    assert float(params["optimum.w2"]) == pytest.approx(-2.0, abs=1e-6)  # (float32 data)
    assert float(params["condition_number"]) > 1
    artifacts = {a.path for a in _store(tmp_path).list_artifacts(found.info.run_id)}
    assert {"loss.png", "parameters.png"} <= artifacts and "fit.png" not in artifacts
    (dataset,) = found.inputs.dataset_inputs
    assert [c["name"] for c in json.loads(dataset.dataset.schema)["mlflow_colspec"]] == [
        "x1", "x2", "x3", "y"]  # fmt: skip
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model(f"runs:/{found.info.run_id}/model")
    assert loaded.metadata.signature.inputs.input_names() == ["x1", "x2", "x3"]
    final = json.loads((tmp_path / "out" / "result.json").read_text())["final"]
    expected = x @ [final["final_w1"], final["final_w2"], final["final_w3"]] + final["final_b"]
    np.testing.assert_allclose(loaded.predict(frame), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("setting", "in_sweep", "logged"),
    [("null", False, True), ("false", False, False), ("null", True, False), ("true", True, True)],
)
def test_a_single_run_logs_its_model_and_a_sweeps_job_only_when_asked(
    tmp_path: Path, setting: str, in_sweep: bool, logged: bool
) -> None:
    (tmp_path / "out").mkdir()
    overrides = ("plots=false", f"mlflow.log_model={setting}")
    conf = make_config(*overrides)
    run(conf, RunContext(tmp_path, tmp_path / "out", overrides, in_sweep=in_sweep))
    artifacts = {a.path for a in _store(tmp_path).list_artifacts(_only_run(tmp_path).info.run_id)}
    assert artifacts == {"config.yaml", "metrics.csv"} | ({"model"} if logged else set())


def test_the_training_data_is_the_runs_input_and_its_digest_finds_runs_on_the_same_data(
    tmp_path: Path,
) -> None:
    (tmp_path / "points.csv").write_text("x,y\n1,3\n2,5\n3,7\n4,9\n")
    for run_dir, overrides in [
        ("one", ["data=csv", "data.path=points.csv", "lr=0.01"]),
        ("two", ["data=csv", "data.path=points.csv", "lr=0.02"]),
        ("three", ["lr=0.01"]),  # seed 002's inline points
    ]:
        (tmp_path / run_dir).mkdir()
        conf = make_config(*overrides, "epochs=3", "plots=false")
        run(conf, RunContext(tmp_path, tmp_path / run_dir, tuple(overrides)))
    client = _store(tmp_path)
    experiment = client.get_experiment_by_name("runner").experiment_id
    runs = {r.data.tags["hydra.output_dir"]: r for r in client.search_runs([experiment])}
    inputs = {d: r.inputs.dataset_inputs for d, r in runs.items()}
    assert all(len(i) == 1 for i in inputs.values())
    csv_input = inputs[str(tmp_path / "one")][0]
    dataset = csv_input.dataset
    assert dataset.name == "points.csv" and dataset.source_type == "local"
    assert json.loads(dataset.source)["uri"] == str(tmp_path / "points.csv")
    assert json.loads(dataset.profile) == {"num_rows": 4, "num_elements": 8}
    assert [(t.key, t.value) for t in csv_input.tags] == [("mlflow.data.context", "training")]
    inline = inputs[str(tmp_path / "three")][0].dataset
    assert inline.name == "inline" and inline.digest != dataset.digest
    same = client.search_runs([experiment], f"dataset.digest = '{dataset.digest}'")
    assert {r.data.tags["hydra.output_dir"] for r in same} == {
        str(tmp_path / "one"),
        str(tmp_path / "two"),
    }


def test_log_steps_writes_steps_csv_and_each_steps_loss_to_mlflow(tmp_path: Path) -> None:
    csv_path = _run(tmp_path, "batch_size=2", "log_steps=true", "epochs=3", "plots=false")
    steps = pd.read_csv(tmp_path / "out" / "steps.csv")  # 3 points: 2 steps an epoch
    assert steps["step"].tolist() == list(range(6))
    assert steps["epoch"].tolist() == [0, 0, 1, 1, 2, 2]
    assert list(pd.read_csv(csv_path).columns) == [
        "epoch", "loss", "a", "b", "grad_a", "grad_b", "train_loss_mean", "gap", "distance"
    ]  # fmt: skip
    found = _only_run(tmp_path)
    history = _store(tmp_path).get_metric_history(found.info.run_id, "step_loss")
    assert [m.step for m in history] == list(range(6))
    assert [m.value for m in history] == steps["step_loss"].tolist()
    artifacts = {a.path for a in _store(tmp_path).list_artifacts(found.info.run_id)}
    assert {"metrics.csv", "steps.csv"} <= artifacts
