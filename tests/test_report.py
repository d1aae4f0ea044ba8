"""runner/report.py: the sweep's summary table, the one ranking, and the pictures of many
runs, checked on the matplotlib figures themselves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runner.report import (
    STATUS_ORDER,
    SUMMARY_COLUMNS,
    draw_final_loss_vs_lr,
    draw_loss_curves,
    plot_loss_curves,
    rank,
    series_labels,
    summarize,
    sweep_plots,
)


def _job(sweep: Path, n: int, overrides: list[str], result: dict | str | None) -> None:
    (sweep / str(n) / ".hydra").mkdir(parents=True)
    (sweep / str(n) / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    if result is not None:
        text = result if isinstance(result, str) else json.dumps(result)
        (sweep / str(n) / "result.json").write_text(text)


def _result(status: str, loss: float | None, lr: float, diverged_at: int | None = None) -> dict:
    final = {"final_a": 0.5, "final_b": 0.4} if status == "FINISHED" else {}
    return {"status": status, "epochs_run": diverged_at or 50, "final_loss": loss,
            "final": final, "lr": lr, "stable_lr_max": 0.18, "optimum_loss": 0.0,
            "mlflow_run_id": f"run-{lr}", "diverged_at_epoch": diverged_at,
            "converged_at_epoch": None, "failure": None}  # fmt: skip


def test_summary_ranks_finished_by_loss_then_diverged_killed_failed(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["lr=0.01"], _result("FINISHED", 0.3, 0.01))
    _job(tmp_path, 1, ["lr=0.1"], _result("FINISHED", 0.001, 0.1))
    _job(tmp_path, 2, ["lr=9"], _result("DIVERGED", None, 9.0, diverged_at=7))  # null loss
    _job(tmp_path, 3, ["lr=0.5"], None)  # died without a result
    _job(tmp_path, 4, ["lr=0.3"], _result("KILLED", None, 0.3))
    _job(tmp_path, 10, ["lr=0.2"], _result("FINISHED", 0.02, 0.2))
    _job(tmp_path, 11, ["lr=8"], '{"status": "DIVERGED", "final_loss": Infinity, "final": {}}')
    (tmp_path / "summary.csv").write_text("not a job")
    (tmp_path / "12").mkdir()  # a number, but no Hydra job in it

    summary = summarize(tmp_path)
    assert summary.columns.tolist() == SUMMARY_COLUMNS
    assert summary["overrides"].tolist() == [
        "lr=0.1", "lr=0.2", "lr=0.01", "lr=9", "lr=8", "lr=0.3", "lr=0.5",
    ]  # fmt: skip
    assert summary["status"].tolist() == [
        "FINISHED", "FINISHED", "FINISHED", "DIVERGED", "DIVERGED", "KILLED", "FAILED",
    ]  # fmt: skip
    assert summary.loc[3, "diverged_at_epoch"] == 7 and summary.loc[3, "epochs_run"] == 7
    assert summary["final_loss"].iloc[3:].tolist() == [math.inf] * 4  # null, Infinity, absent
    assert summary.loc[0, "final_a"] == 0.5 and summary.loc[0, "mlflow_run_id"] == "run-0.1"
    assert pd.isna(summary.loc[3, "final_a"]) and summary["epochs_run"].dtype == "Int64"
    assert summary["lr"].dtype == float and pd.isna(summary.loc[6, "lr"])


def test_a_stopped_sweep_s_jobs_without_a_result_are_killed_not_failed(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["lr=0.1"], _result("FINISHED", 0.001, 0.1))
    _job(tmp_path, 1, ["lr=0.2"], None)  # composed, then the sweep was stopped
    assert summarize(tmp_path, unended="KILLED")["status"].tolist() == ["FINISHED", "KILLED"]
    assert summarize(tmp_path)["status"].tolist() == ["FINISHED", "FAILED"]  # it died


def test_summary_of_an_empty_sweep_has_the_columns(tmp_path: Path) -> None:
    summary = summarize(tmp_path)
    assert summary.empty and summary.columns.tolist() == SUMMARY_COLUMNS


def test_summary_of_k_features_has_their_parameter_columns(tmp_path: Path) -> None:
    final = {"final_w1": 1.0, "final_w2": -2.0, "final_b": 0.3, "final_gap": 0.0}
    _job(tmp_path, 0, ["lr=0.1"], _result("FINISHED", 0.01, 0.1) | {"final": final})
    _job(tmp_path, 1, ["lr=9"], _result("DIVERGED", None, 9.0, diverged_at=3))
    summary = summarize(tmp_path)
    at = SUMMARY_COLUMNS.index("final_a")
    params = ["final_w1", "final_w2", "final_b"]
    expected = [*SUMMARY_COLUMNS[:at], *params, *SUMMARY_COLUMNS[at + 2 :]]
    assert summary.columns.tolist() == expected
    assert summary.loc[0, ["final_w1", "final_w2", "final_b"]].tolist() == [1.0, -2.0, 0.3]
    assert summary["final_w2"].dtype == float and pd.isna(summary.loc[1, "final_w2"])


def test_rank_orders_statuses_then_loss_then_job() -> None:
    frame = pd.DataFrame({
        "job": [6, 5, 4, 3, 2, 1, 0],
        "status": ["FAILED", "RUNNING", "KILLED", "DIVERGED", "PRUNED", "FINISHED", "FINISHED"],
        "final_loss": [0.0, 0.0, np.nan, math.inf, math.inf, 0.5, 0.5],
    })  # fmt: skip
    ranked = rank(frame)
    order = ["FINISHED", "FINISHED", "PRUNED", "DIVERGED", "KILLED", "FAILED", "RUNNING"]
    assert ranked["status"].tolist() == order and list(STATUS_ORDER) == order[1:6]  # unknown: last
    assert ranked["job"].tolist() == [0, 1, 2, 3, 4, 6, 5]  # equal losses: by job


def test_rank_without_jobs_keeps_the_incoming_order_for_ties() -> None:
    frame = pd.DataFrame({"run_id": ["c", "a", "b"], "status": ["FINISHED"] * 3,
                          "final_loss": [0.1, 0.1, 0.01]})  # fmt: skip
    assert rank(frame)["run_id"].tolist() == ["b", "c", "a"]


def _curves() -> list:
    epochs = np.arange(20)
    return [
        ("lr=0.1", epochs, 2.0 * 0.5**epochs, "FINISHED"),
        ("lr=0.01", epochs, 2.0 * 0.9**epochs, "FINISHED"),
        ("lr=9", epochs[:8], 2.0 * 1e5 ** epochs[:8], "DIVERGED"),  # up to 2e35
        ("lr=0.3", epochs[:0], epochs[:0] * 1.0, "KILLED"),  # nothing logged: not drawn
    ]


def test_loss_curves_are_drawn_with_diverged_ones_dashed_and_clipped() -> None:
    fig = draw_loss_curves(_curves(), "Loss per epoch")
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["lr=0.1", "lr=0.01", "lr=9 (diverged)"]
    assert [line.get_linestyle() for line in lines] == ["-", "-", "--"]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "loss (MSE, log scale)" and ax.get_title() == "Loss per epoch"
    low, high = ax.get_ylim()
    assert high == pytest.approx(4.0)  # twice the highest starting loss
    assert low == pytest.approx(2.0 * 0.5**19 / 2)
    (cut,) = ax.collections  # the diverged curve leaves the picture at epoch 1: a cross
    assert cut.get_offsets().tolist() == [[1.0, 4.0]]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["lr=0.1", "lr=0.01", "lr=9 (diverged)"]


def test_plot_loss_curves_writes_a_png_and_counts_lines(tmp_path: Path) -> None:
    assert plot_loss_curves(_curves(), tmp_path / "loss.png", "t") == 3
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_loss_curves([], tmp_path / "none.png", "t") == 0  # no runs: an empty axis
    assert (tmp_path / "none.png").is_file()


CROSSES = "diverged or ended above the start (drawn there)"


def _summary() -> pd.DataFrame:
    return pd.DataFrame({
        "job": [0, 1, 2], "overrides": ["lr=0.01", "lr=0.1", "lr=0.5"],
        "status": ["FINISHED", "FINISHED", "DIVERGED"], "lr": [0.01, 0.1, 0.5],
        "stable_lr_max": [0.18] * 3, "final_loss": [0.006, 0.0004, np.inf],
    })  # fmt: skip


def test_final_loss_against_lr_marks_diverged_jobs_and_the_limit() -> None:
    (ax,) = draw_final_loss_vs_lr(_summary()).axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "lr (log scale)" and ax.get_ylabel() == "final loss (log scale)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "finished",
        "diverged or ended above the start (drawn there)",
        "stability limit 2/λmax = 0.18",
    ]
    finished, diverged, limit = ax.get_lines()
    assert finished.get_xdata().tolist() == [0.01, 0.1]
    assert diverged.get_ydata().tolist() == [0.006]  # at the top of the finished ones
    assert limit.get_xdata()[0] == 0.18


def test_final_loss_against_lr_marks_a_search_s_pruned_trials_apart() -> None:
    summary = pd.DataFrame({
        "overrides": ["search=optuna lr=0.0001", "search=optuna lr=0.05", "search=optuna lr=0.3"],
        "status": ["PRUNED", "FINISHED", "PRUNED"], "lr": [0.0001, 0.05, 0.3],
        "stable_lr_max": [0.18] * 3, "final_loss": [np.inf, 0.002, np.inf],
    })  # fmt: skip
    (ax,) = draw_final_loss_vs_lr(summary, start_loss=2.4).axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "finished",
        "pruned (no final loss: drawn at the top)",
        "stability limit 2/λmax = 0.18",
    ]
    finished, pruned, _ = ax.get_lines()
    assert finished.get_xdata().tolist() == [0.05]
    assert pruned.get_xdata().tolist() == [0.0001, 0.3]
    assert pruned.get_ydata().tolist() == [2.4, 2.4] and pruned.get_marker() == "v"


def test_final_loss_against_lr_draws_a_series_per_setting_and_the_limit_where_it_applies() -> None:
    summary = pd.DataFrame({
        "overrides": [f"lr={lr} optimizer={o}" for o in ("sgd", "momentum", "adam")
                      for lr in (0.01, 0.1, 0.5)],
        "status": ["FINISHED", "FINISHED", "DIVERGED"] * 2 + ["FINISHED"] * 3,
        "lr": [0.01, 0.1, 0.5] * 3,
        "stable_lr_max": [0.18] * 3 + [np.nan] * 6,  # plain gradient descent's alone
        "final_loss": [0.006, 0.0004, np.inf, 0.003, 0.0002, np.inf, 0.5, 0.05, 0.01],
    })  # fmt: skip
    (ax,) = draw_final_loss_vs_lr(summary).axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "optimizer=sgd", f"optimizer=sgd {CROSSES}", "optimizer=momentum",
        f"optimizer=momentum {CROSSES}", "optimizer=adam",
        "stability limit 2/λmax = 0.18 (optimizer=sgd)"]  # fmt: skip
    adam = ax.get_lines()[4]
    assert adam.get_xdata().tolist() == [0.01, 0.1, 0.5]
    assert adam.get_ydata().tolist() == [0.5, 0.05, 0.01]
    assert ax.get_lines()[1].get_ydata().tolist() == [0.5]  # the top of every finished job
    assert series_labels(summary["overrides"]).tolist()[:2] == ["optimizer=sgd"] * 2
    # A job that finished far above where the runs started is a cross at the starting loss.
    blown = summary.assign(final_loss=summary["final_loss"].replace(0.0002, 1e30))
    (ax,) = draw_final_loss_vs_lr(blown, start_loss=2.0).axes
    momentum, crosses = ax.get_lines()[2:4]
    assert momentum.get_xdata().tolist() == [0.01]
    assert crosses.get_xdata().tolist() == [0.1, 0.5] and crosses.get_ydata().tolist() == [2, 2]
    assert series_labels(pd.Series(["lr=0.1", "lr=0.2"])).tolist() == ["", ""]


def test_sweep_plots_write_both_pictures(tmp_path: Path) -> None:
    for job in range(3):
        (tmp_path / str(job)).mkdir()
        pd.DataFrame({"epoch": [0, 1], "loss": [2.0, 1.0 / (job + 1)]}).to_csv(
            tmp_path / str(job) / "metrics.csv", index=False
        )
    paths = sweep_plots(_summary(), tmp_path)
    assert [p.name for p in paths] == ["final_loss_vs_lr.png", "losses.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)

    one_lr = _summary().assign(lr=0.1)
    assert [p.name for p in sweep_plots(one_lr, tmp_path, top=2)] == ["losses.png"]
