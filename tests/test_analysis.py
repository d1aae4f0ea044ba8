"""The exact optimum, the stability limit, the gradient check, the pictures and the
reproducibility record, against hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from support import make_config, train_history, train_setup

from runner.analysis import add_distances, optimum
from runner.loop import How, Member, train
from runner.plots import run_plots
from runner.run import RunContext, build, run

X002, Y002 = np.float32([[1, 2, 3]]), np.float32([1.0, 1.5, 2.0])  # x: [features, points]


def test_optimum_and_stability_limit_by_hand() -> None:
    best = optimum(X002, Y002, bias=True)
    assert best.params == pytest.approx({"a": 0.5, "b": 0.5}, abs=1e-12)
    assert best.loss == pytest.approx(0.0, abs=1e-20)
    # H = 2/3 [[14, 6], [6, 3]]: lambda_max = (17 + sqrt(265)) / 3, lr_max = 2 / lambda_max.
    assert best.stable_lr_max == pytest.approx(6 / (17 + np.sqrt(265)), rel=1e-12)

    theta = optimum(np.float32([[2]]), np.float32([3]), bias=False)  # seed 000: y = theta * x
    assert theta.params == {"a": 1.5} and theta.loss == 0.0
    assert theta.stable_lr_max == pytest.approx(0.25)  # H = 2 x^2 = 8

    x, y = np.float32([[0.5, 0.9, 1.4, 1.8]]), np.float32([2.0, 3.8, 5.0, 7.2])  # seed 003
    a, b = np.polyfit(x[0].astype(float), y.astype(float), 1)
    noisy = optimum(x, y, bias=True)
    assert noisy.params == pytest.approx({"a": a, "b": b}, rel=1e-10)
    assert noisy.loss == pytest.approx(np.mean((a * x[0] + b - y.astype(float)) ** 2), rel=1e-10)


def test_k_features_optimum_hessian_and_condition_number_against_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 40)).astype(np.float32)
    x[2] = 0.9 * x[0] + 0.1 * x[2]  # two features nearly the same: an ill-conditioned H
    y = (1.5 * x[0] - 2 * x[1] + 0.5 * x[2] + 0.3 + rng.normal(size=40)).astype(np.float32)
    best = optimum(x, y, bias=True)
    X = np.column_stack([x.T.astype(np.float64), np.ones(40)])
    solution, *_ = np.linalg.lstsq(X, y.astype(np.float64), rcond=None)
    assert list(best.params) == ["w1", "w2", "w3", "b"]
    np.testing.assert_allclose(list(best.params.values()), solution, rtol=1e-12)
    assert best.loss == pytest.approx(np.mean((X @ solution - y) ** 2), rel=1e-12)
    eigenvalues = np.linalg.eigvalsh(2 / 40 * X.T @ X)
    assert best.stable_lr_max == pytest.approx(2 / eigenvalues[-1], rel=1e-12)
    assert best.condition == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-9)
    assert best.condition == pytest.approx(np.linalg.cond(X) ** 2, rel=1e-6)  # H = 2/N X^T X
    assert best.condition > 100
    # One feature: H = 2/3 [[14, 6], [6, 3]], eigenvalues (17 +- sqrt(265)) / 3.
    one = optimum(X002, Y002, bias=True)
    assert one.condition == pytest.approx((17 + np.sqrt(265)) / (17 - np.sqrt(265)), rel=1e-9)
    # A feature that is another one's copy: a direction the loss cannot see.
    assert optimum(np.stack([x[0], x[0]]), y, bias=True).condition == np.inf


def test_the_gradient_check_covers_every_weight() -> None:
    settings = ("data=synthetic", "data.features=4", "data.correlation=0.5", "check_grad=true")
    hist, _ = train_history(*settings, "lr=0.1")
    assert list(hist.columns[hist.columns.str.startswith("grad_")]) == [
        "grad_w1", "grad_w2", "grad_w3", "grad_w4", "grad_b", "grad_check"]  # fmt: skip
    assert hist["grad_check"].max() < 1e-5  # float32 rounding, nothing more
    conf = make_config(*settings)
    s = build([conf], None)
    s.model.by_name["w3"][0].register_hook(lambda g: 2 * g)  # autograd now wrong for w3 alone
    _, outcome = train_setup(s, conf)
    assert outcome.how == How.grad_check_failed and outcome.at_epoch == 0


def test_gap_and_distance_per_epoch() -> None:
    best = optimum(X002, Y002, bias=True)
    chunk = pd.DataFrame({"epoch": [0], "loss": [2.0], "a": [0.5 + 3.0], "b": [0.5 + 4.0]})
    row = add_distances(chunk, best).iloc[0]
    assert row["gap"] == pytest.approx(2.0) and row["distance"] == pytest.approx(5.0)


def test_the_run_gets_closer_to_the_optimum() -> None:
    hist, _ = train_history("experiment=seed_002", "epochs=200", "lr=0.15")
    best = optimum(X002, Y002, bias=True)
    distances = add_distances(hist, best)["distance"]
    assert distances.iloc[-1] < 0.01 * distances.iloc[0]


def test_gradient_check_agrees_with_autograd() -> None:
    hist, _ = train_history("experiment=seed_002", "check_grad=true")
    assert hist["grad_check"].max() < 1e-6  # float32 rounding, nothing more


def test_gradient_check_fails_a_wrong_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = make_config("experiment=seed_002", "check_grad=true")
    s = build([conf], None)

    def doubled(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 2 * ((y_hat - y) ** 2).mean(dim=-1, keepdim=True)  # twice the analytic gradient

    rows: list[pd.DataFrame] = []
    member = Member(s.optimizers[0], 10, rows.append, check_grad=1e-4)
    (outcome,) = train(s.model, doubled, [member], s.x, s.y)
    # Epoch 0 of seed 002: analytic grad_a = 20/3, autograd twice that: |20/3| / (1 + 20/3).
    assert outcome.how == How.grad_check_failed and outcome.at_epoch == 0
    assert rows[0]["grad_check"].iloc[0] == pytest.approx(20 / 23, rel=1e-6)


def test_unstable_lr_is_warned_before_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = make_config("lr=0.2", "epochs=3", "mlflow.enabled=false", "plots=false")
    run(conf, RunContext(launch_dir=tmp_path, run_dir=tmp_path))
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "warning: lr=0.2 is at or above 0.1803, the largest stable step" in warning.message
    caplog.clear()
    quiet = make_config("lr=0.1", "epochs=3", "mlflow.enabled=false", "plots=false")
    run(quiet, RunContext(launch_dir=tmp_path, run_dir=tmp_path))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_the_stability_limit_is_reported_for_plain_gradient_descent_only(tmp_path: Path) -> None:
    for optimizer, plain in (("sgd", True), ("momentum", False), ("adam", False)):
        (tmp_path / optimizer).mkdir()
        conf = make_config(f"optimizer={optimizer}", "epochs=3", "mlflow.enabled=false",
                           "plots=false")  # fmt: skip
        result = run(conf, RunContext(launch_dir=tmp_path, run_dir=tmp_path / optimizer))
        assert (result.stable_lr_max == pytest.approx(0.18029485)) == plain, optimizer
        assert np.isnan(result.stable_lr_max) != plain  # momentum's and Adam's limits differ


def test_plots_are_written_and_not_empty(tmp_path: Path) -> None:
    for overrides, name in [(("experiment=seed_002",), "ab"), (("experiment=seed_000",), "theta")]:
        hist, s = train_history(*overrides)
        final = {n: p.item() for n, p in zip(s.model.names(), s.model.member(0), strict=True)}
        out = tmp_path / name
        out.mkdir()
        paths = run_plots(add_distances(hist, s.best), *s.points, s.best, final, out)
        assert [p.name for p in paths] == ["loss.png", "fit.png", "trajectory.png"]
        for path in paths:
            assert path.read_bytes()[:4] == b"\x89PNG"  # what they show: tests/test_plots.py


def test_same_config_and_seed_give_the_same_csv_bytes(tmp_path: Path) -> None:
    overrides = ["data=synthetic", "data.n=500", "model.init=random", "seed=11", "epochs=120",
                 "optimizer=momentum", "lr=0.05", "mlflow.enabled=false", "plots=false",
                 "deterministic=true"]  # fmt: skip
    outputs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        run(make_config(*overrides), RunContext(tmp_path, tmp_path / name, tuple(overrides)))
        outputs.append((tmp_path / name / "metrics.csv").read_bytes())
    assert outputs[0] == outputs[1] and len(outputs[0]) > 10_000
    (tmp_path / "other").mkdir()
    other = [o if o != "seed=11" else "seed=12" for o in overrides]
    run(make_config(*other), RunContext(tmp_path, tmp_path / "other", tuple(other)))
    assert (tmp_path / "other" / "metrics.csv").read_bytes() != outputs[0]
