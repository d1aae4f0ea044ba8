"""The batched launcher against Hydra's own launcher test suites, as Hydra's launcher
plugins run them against themselves (hydra.test_utils.launcher_common_tests): with a plain
task function (job by job) and with one that takes every job at once (`run_together`, the
path the runner's jobs take)."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from omegaconf import DictConfig, OmegaConf
from support import children, run_cli, store, sweep_parent

from hydra_plugins.runner_batched import to_yaml
from runner import gate

pytestmark = pytest.mark.usefixtures("hydra_as_fresh")


# Hydra's own launcher suites: about 10 s each in-process, so they run with the slow tests
# (the whole suite in CI) and keep `pytest -m "not slow"` under a minute.
@pytest.mark.slow
@pytest.mark.parametrize("launcher_name, overrides", [("batched", [])])
class TestBatchedLauncher(LauncherTestSuite):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("launcher_name, overrides", [("batched", [])])
class TestBatchedLauncherTogether(LauncherTestSuite):
    def get_task_function(self) -> Callable[[Any], Any]:
        def task_func(_: DictConfig) -> Any:
            return 100

        def run_together(jobs: list[tuple[DictConfig, DictConfig]]) -> list[Any]:
            assert all(hydra_cfg.runtime.output_dir for _, hydra_cfg in jobs)
            return [100 for _ in jobs]

        task_func.run_together = run_together  # type: ignore[attr-defined]
        return task_func


@pytest.mark.slow
@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=batched"])])
class TestBatchedLauncherIntegration(IntegrationTestSuite):
    pass


# Hydra's suite for sweepers that launch in batches, against the runner's grid sweeper
# (hydra_plugins/runner_sweeper): 6 jobs in batches of 2, in order, each a whole job.
# (The suite extends its `overrides`: a list of its own for each case.)
GRID = ["hydra.sweeper._target_=hydra_plugins.runner_sweeper.GridSweeper",
        "hydra.sweeper.max_batch_size=2"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher_name, overrides", [("basic", [*GRID]), ("batched", [*GRID])])
class TestGridSweeperBatches(BatchedSweeperTestSuite):
    pass


# Sweeps whose jobs train together in groups (one per loss x optimizer), every member
# setting mixed inside a group: lr (one diverges), seeds with random init, epochs,
# momentum, Nesterov, weight decay, zero_grad, Adam's betas and eps, stop.tol, check_grad.
SWEEPS = {
    "ways": ["loss=manual,mse", "optimizer=manual,sgd", "lr=0.02,1.5", "seed=0,1",
             "model.init=random", "epochs=30,45"],
    "momentum": ["optimizer=manual,sgd", "optimizer.momentum=0.9",
                 "optimizer.nesterov=false,true", "optimizer.weight_decay=0,0.01",
                 "zero_grad=true,false", "epochs=40"],
    "adam": ["optimizer=adam", "optimizer.betas=[0.9,0.999],[0.8,0.99]",
             "optimizer.eps=1e-8,1e-6", "stop.tol=null,1e-4", "check_grad=true,false",
             "epochs=300", "chunk=64"],
    # val_fraction=0: both seeds in one batch, each member shuffling in its own order;
    # 0.25: the seed draws the held-out points, so each seed is a batch of its own.
    "minibatch": ["data.x=[0.1,0.5,-0.3,0.9,0.2,-0.7,0.4,0.8,-0.1,0.6,0.3,-0.5]",
                  "data.true_a=2", "data.true_b=-1", "batch_size=4", "seed=0,1",
                  "lr=0.05,0.2", "schedule=constant,cosine", "data.val_fraction=0,0.25",
                  "epochs=40", "chunk=16"],
    # y = w . x + b on three correlated features (data.seed: every seed one batch)
    "features": ["data=synthetic", "data.n=40", "data.features=3", "data.true_w=[1,-2,0.5]",
                 "data.correlation=0.7", "data.seed=3", "loss=manual,mse",
                 "optimizer=manual,sgd", "lr=0.05,0.4", "model.init=fixed,random", "seed=0,1",
                 "check_grad=true", "epochs=30"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_job_is_byte_identical_to_the_same_job_run_alone(tmp_path: Path, sweep: str) -> None:
    """Each job's metrics.csv, trained in a batch, is the very file the basic launcher
    writes for it, one job at a time; and so is how it ended."""
    runs = {}
    for launcher in ("batched", "basic"):
        done = run_cli("-m", f"hydra/launcher={launcher}", *SWEEPS[sweep], "mlflow.enabled=false",
                       f"hydra.sweep.dir={launcher}", cwd=tmp_path, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        runs[launcher] = sorted((tmp_path / launcher).glob("*/metrics.csv"))
    batched, basic = runs["batched"], runs["basic"]
    assert len(batched) == len(basic) == _jobs(SWEEPS[sweep])
    statuses = set()
    for mine, theirs in zip(batched, basic, strict=True):
        assert mine.read_bytes() == theirs.read_bytes(), mine
        ended = [json.loads((p.parent / "result.json").read_text()) for p in (mine, theirs)]
        for key in ("status", "epochs_run", "final_loss", "final", "converged_at_epoch",
                    "stalled_at_epoch"):  # fmt: skip
            assert ended[0][key] == ended[1][key], (mine, key)
        statuses.add(ended[0]["status"])
        overrides = [(p.parent / ".hydra" / "overrides.yaml").read_text() for p in (mine, theirs)]
        configs = [(p.parent / ".hydra" / "config.yaml").read_text() for p in (mine, theirs)]
        assert overrides[0] == overrides[1] and configs[0] == configs[1]
    if sweep == "ways":  # lr=1.5 is far above this data's stability limit
        assert statuses == {"FINISHED", "DIVERGED"}


def _jobs(overrides: list[str]) -> int:
    return math.prod(len(o.split("=", 1)[1].split(",")) if "[" not in o else
                     o.count("[") for o in overrides)  # fmt: skip


@pytest.mark.parametrize("overrides", [
    [],
    ["lr=0.1", "optimizer=adam", "hydra.job.name=a: b", "seed=3"],
    # strings that read back as numbers or bools are quoted; others are not
    ["mlflow.experiment='1e3'", "hydra.job.name='true'", "data=csv", "data.path='0x1f.csv'"],
    ["mlflow.experiment='été'", "hydra.job.name='null'", "model.w=[1.5,2]", "model.init=fixed"],
])  # fmt: skip
def test_the_yaml_files_are_the_text_omegaconf_writes(overrides: list[str]) -> None:
    config = gate.compose_checked(overrides, {})
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    assert to_yaml(task) == OmegaConf.to_yaml(task)
    assert to_yaml(config, "hydra") == OmegaConf.to_yaml({"hydra": config.hydra})
    listed = OmegaConf.create(overrides)
    assert to_yaml(listed) == OmegaConf.to_yaml(listed)


@pytest.mark.slow
def test_a_thousand_job_sweep_loses_no_job_and_no_step(tmp_path: Path) -> None:
    """1,000 jobs (four launches of 256 at most, each a batch, two tracking processes):
    every child FINISHED under the sweep's parent, every epoch of each in the store."""
    done = run_cli("-m", "lr=range(0.0001,0.10005,0.0001)", "epochs=5", "hydra.sweep.dir=sweep",
                   cwd=tmp_path, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert len(summary) == 1000 and set(summary["status"]) == {"FINISHED"}
    client = store(tmp_path)
    kids = children(client, sweep_parent(client, (tmp_path / "sweep").resolve()))
    assert len(kids) == 1000 and {k.info.status for k in kids} == {"FINISHED"}
    assert {k.info.run_id for k in kids} == set(summary["mlflow_run_id"])
    # Every metric step of every child, counted in the store itself.
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        steps = db.execute(
            "SELECT run_uuid, key, COUNT(DISTINCT step) FROM metrics "
            "WHERE key IN ('loss', 'a', 'b', 'grad_a', 'grad_b', 'gap', 'distance') "
            "GROUP BY run_uuid, key"
        ).fetchall()
    assert len(steps) == 1000 * 7 and {count for _, _, count in steps} == {5}
    assert {run for run, _, _ in steps} == set(summary["mlflow_run_id"])
