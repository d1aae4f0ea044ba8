"""Sweeps on real launchers: Ray tasks on a local Ray head, submitit jobs, the Slurm preset.

Every job still ends up as a child of the sweep's parent run in ONE MLflow store, and
summary.csv still ranks them, however far from the launching process the jobs ran.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ephemeral_port_reserve
import pandas as pd
import psutil
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import OmegaConf
from support import (
    children,
    output_until,
    run_cli,
    runner_env,
    start_dashboard,
    stop_dashboard,
    sweep_parent,
)

from runner import gate
from runner.config import CONF_DIR, ConfigError


def check_command_line(argv: list[str]) -> gate.Plan:
    return gate.check(argv, reserve=False)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


RAY_CLI = shutil.which("ray", path=str(Path(sys.executable).parent))
needs_ray = pytest.mark.skipif(
    not (_installed("ray") and _installed("hydra_plugins.hydra_ray_launcher") and RAY_CLI),
    reason="ray / hydra-ray-launcher not installed (pip install -e '.[launchers]')",
)
needs_submitit = pytest.mark.skipif(
    not (_installed("submitit") and _installed("hydra_plugins.hydra_submitit_launcher")),
    reason="submitit / hydra-submitit-launcher not installed (pip install -e '.[launchers]')",
)
# Our conf/hydra/launcher/ray.yaml shadows the plugin's preset, and Hydra says so when composing.
shadowed_preset = pytest.mark.filterwarnings(
    r"ignore:\s*'hydra/launcher/ray' is validated against ConfigStore schema"
)

# Seed 002's data is stable below lr = 0.18: all 8 jobs finish, each with a different loss.
LRS = ["0.01", "0.02", "0.03", "0.05", "0.07", "0.09", "0.11", "0.13"]


def _ray_env(**extra: str) -> dict[str, str]:
    """The environment of the Ray head and of the driver: a loopback-only Ray (without
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 the driver announces the host's address and hangs)
    and no token authentication."""
    env = {k: v for k, v in runner_env().items() if not k.startswith("RAY_")}
    return env | {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_DEDUP_LOGS": "0",  # every job's lines reach the driver, not "[repeated 7x]"
        "RAY_USAGE_STATS_ENABLED": "0",
        **extra,
    }


def _session_processes(session: int, marker: str) -> list[psutil.Process]:
    """Live processes of the head's session, or naming its temp dir (zombies excluded)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            named = marker in " ".join(process.info["cmdline"] or ())
            if process.info["status"] != psutil.STATUS_ZOMBIE and (
                named or os.getsid(process.pid) == session
            ):
                found.append(process)
    return found


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[str, Path]]:
    """A local Ray head (2 CPUs) on 127.0.0.1; yields its address and its --temp-dir."""
    # A short temp dir: Ray's unix socket paths below it must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = ephemeral_port_reserve.reserve()
    command = [
        RAY_CLI, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
        "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
        "--object-store-memory=100000000",
        # Ports that default to fixed numbers: the agent binds a free one itself (0); the GCS
        # and the client server get ports held in TIME_WAIT, which the kernel hands to no one
        # else while Ray binds them (the GCS's own 0 leaves its address in a file written
        # after the head says it has started: a race).
        f"--port={port}", "--dashboard-agent-listen-port=0",
        f"--ray-client-server-port={ephemeral_port_reserve.reserve()}",
    ]  # fmt: skip
    head = subprocess.Popen(
        command,
        cwd=temp,  # Ray's jobs run here, not in the driver's directory
        env=_ray_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # gcs_server, raylet, agents, workers: one session to stop
    )

    def stop() -> None:
        # Only our own session: `ray stop --force` would also stop any other Ray on the host
        # (and takes about 7 s); SIGKILL of the session is instant.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        _, left = psutil.wait_procs(_session_processes(head.pid, str(temp)), timeout=15)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"

    try:
        output_until(head, r"(Ray runtime started)", temp / "head.log", timeout=90)
    except RuntimeError as e:
        stop()
        pytest.fail(f"ray start --head failed: {e}")
    yield f"127.0.0.1:{port}", temp
    stop()


def _assert_sweep(client: MlflowClient, sweep_dir: Path, lrs: list[str], epochs: int) -> list:
    """The parent run and one FINISHED child per lr with a full history, ranked in summary.csv;
    returns the children."""
    parent_id = sweep_parent(client, sweep_dir)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    kids = {c.info.run_id: c for c in children(client, parent_id)}
    assert len(kids) == len(lrs)
    assert sorted(c.data.params["lr"] for c in kids.values()) == sorted(lrs)
    for run_id, child in kids.items():
        assert child.info.status == "FINISHED", child.info.run_name
        for name in ("loss", "a", "b", "grad_a", "grad_b"):
            steps = [m.step for m in client.get_metric_history(run_id, name)]
            assert sorted(steps) == list(range(epochs)), (child.info.run_name, name)

    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert len(summary) == len(lrs) and set(summary["status"]) == {"FINISHED"}
    assert summary["final_loss"].is_monotonic_increasing  # best first
    assert set(summary["mlflow_run_id"]) == set(kids)
    for row in summary.itertuples():  # each row names the run that did what the row says
        child = kids[row.mlflow_run_id]
        assert f"lr={child.data.params['lr']}" in row.overrides.split()
        assert child.data.metrics["final_loss"] == row.final_loss
        assert row.epochs_run == epochs
    assert parent.data.tags["best_run_id"] == summary.loc[0, "mlflow_run_id"]
    return list(kids.values())


@pytest.mark.slow
@needs_ray
@shadowed_preset
def test_ray_sweep_runs_every_job_as_a_ray_task_into_one_server(
    ray_head: tuple[str, Path], tmp_path: Path
) -> None:
    address, ray_temp = ray_head
    (home := tmp_path / "server").mkdir()
    (work := tmp_path / "work").mkdir()
    sweep_dir = tmp_path / "sweep"  # absolute: Ray's jobs do not run in `work`
    url, server = start_dashboard(home)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runner", "-m", "hydra/launcher=ray", f"lr={','.join(LRS)}",
             "epochs=30", f"mlflow.tracking_uri={url}", f"hydra.sweep.dir={sweep_dir}"],
            cwd=work,
            env=_ray_env(RAY_ADDRESS=address),
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        assert f"Connecting to existing Ray cluster at address: {address}" in done.stderr
        assert "runner: sweep of 8 jobs, best first" in done.stdout
        children = _assert_sweep(MlflowClient(url), sweep_dir, LRS, epochs=30)
        parent_id = sweep_parent(MlflowClient(url), sweep_dir)
        driver_pid = MlflowClient(url).get_run(parent_id).data.tags["runner.main_pid"]
    finally:
        stop_dashboard(server)

    # Every job ran as a Ray task: in a Ray worker process, not in the driver, and printed
    # its run id into that worker's log (worker-<id>-<job>-<pid>.out under Ray's temp dir).
    logs = ray_temp / "session_latest" / "logs"
    for child in children:
        pid = child.data.tags["runner.main_pid"]
        assert pid != driver_pid
        (worker_log,) = logs.glob(f"worker-*-{pid}.out")
        text = worker_log.read_text()
        assert ":task_name:_run_job" in text
        assert f"runner: mlflow run {child.info.run_id} " in text
    assert "(_run_job pid=" in done.stdout  # Ray forwards the jobs' lines to the driver

    # Hydra gives the jobs the driver's directory as runtime.cwd; they only *run* in Ray's.
    for job in range(len(LRS)):
        runtime = OmegaConf.load(sweep_dir / str(job) / ".hydra" / "hydra.yaml").hydra.runtime
        assert runtime.cwd == str(work) and runtime.output_dir == str(sweep_dir / str(job))
    assert not (work / "mlflow.db").exists()  # every run went to the server
    assert not (ray_temp / "multirun").exists() and not (ray_temp / "mlflow.db").exists()


@pytest.mark.slow
@needs_ray
@shadowed_preset
def test_an_optuna_search_runs_its_trials_as_ray_tasks_that_report_to_the_study(
    ray_head: tuple[str, Path], tmp_path: Path
) -> None:
    """A round of 2 trials as Ray tasks, each reporting its loss to the stored study (an
    SQLite file every task on this machine reaches by its absolute path)."""
    import optuna

    address, _ = ray_head
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "search=optuna", "hydra/launcher=ray",
         "lr=tag(log,interval(1e-3,0.1))", "epochs=30", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.n_jobs=2", "hydra.sweeper.study_name=ray", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=_ray_env(RAY_ADDRESS=address), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="ray", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    for trial in study.trials:  # every 3rd epoch (a tenth of 30), from a Ray worker
        assert sorted(trial.intermediate_values) == list(range(2, 29, 3))  # (not the last)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kids = children(client, sweep_parent(client, sweep_dir))
    driver = client.get_run(sweep_parent(client, sweep_dir)).data.tags["runner.main_pid"]
    assert len(kids) == 2 and {k.info.status for k in kids} == {"FINISHED"}
    assert driver not in {k.data.tags["runner.main_pid"] for k in kids}  # run by Ray workers


@pytest.mark.slow
@needs_submitit
def test_submitit_local_sweep_is_one_parent_with_children(tmp_path: Path) -> None:
    done = run_cli(
        "-m", "hydra/launcher=submitit_local", "lr=0.01,0.1", "epochs=20", cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = _assert_sweep(client, sweep_dir, ["0.01", "0.1"], epochs=20)

    # Each job ran in a process of its own, and its output is in submitit's folder.
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.out"))
    parent_id = sweep_parent(client, sweep_dir)
    driver_pid = client.get_run(parent_id).data.tags["runner.main_pid"]
    pids = {c.data.tags["runner.main_pid"] for c in children}
    assert len(pids) == 2 and driver_pid not in pids
    for child in children:
        assert f"runner: mlflow run {child.info.run_id} " in logs


def _launcher(*overrides: str, resolve: bool = False) -> dict:
    """hydra.launcher as `python -m runner -m OVERRIDES...` would compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=resolve)  # type: ignore[return-value]


@pytest.mark.slow
@needs_submitit
def test_submitit_slurm_preset_composes_with_sensible_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = _launcher("hydra/launcher=submitit_slurm")
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["timeout_min"] == 60
    assert launcher["nodes"] == 1 and launcher["tasks_per_node"] == 1
    # Left to the cluster's defaults: one CPU, no GPU, its default memory, its default partition
    for key in ("cpus_per_task", "gpus_per_node", "mem_gb", "partition", "account", "setup"):
        assert launcher[key] is None, key
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    assert launcher["name"] == "${hydra.job.name}"

    settings = [
        "hydra.launcher.partition=cpu", "hydra.launcher.account=ml",
        "hydra.launcher.timeout_min=20", "hydra.launcher.cpus_per_task=2",
        "hydra.launcher.gpus_per_node=1", "hydra.launcher.mem_gb=4",
    ]  # fmt: skip
    launcher = _launcher("hydra/launcher=submitit_slurm", *settings)
    assert launcher["partition"] == "cpu" and launcher["account"] == "ml"
    assert launcher["timeout_min"] == 20 and launcher["cpus_per_task"] == 2
    assert launcher["gpus_per_node"] == 1 and launcher["mem_gb"] == 4
    # Shell commands on the cluster's nodes are not the command line's to give.
    with pytest.raises(ConfigError, match=r"^hydra.launcher.setup=.*one of the Hydra settings"):
        check_command_line(["-m", "hydra/launcher=submitit_local", "hydra.launcher.setup=[ls]"])
    # The runner's own checks take them too, as on a Slurm login node (srun on PATH).
    (fake_srun := tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    fake_srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    check_command_line(["-m", "hydra/launcher=submitit_slurm", *settings, "lr=0.01,0.1"])

    # The plugin's schema types the keys: a typo or a wrong type stops the command up front.
    with pytest.raises(ConfigError, match="timout_min"):
        check_command_line(["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timout_min=5"])
    with pytest.raises(ConfigError, match="timeout_min"):
        check_command_line(["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=x"])


@pytest.mark.slow
@needs_submitit
@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has Slurm's srun")
def test_submitit_slurm_without_slurm_fails_naming_srun(tmp_path: Path) -> None:
    done = run_cli("-m", "hydra/launcher=submitit_slurm", "lr=0.1", "epochs=5", cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("runner: error: hydra/launcher='submitit_slurm'") and "srun" in line
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.slow
@needs_ray
@shadowed_preset
def test_ray_refuses_a_relative_sweep_dir() -> None:
    with pytest.raises(ConfigError, match=r"hydra.sweep.dir='multirun/.*an absolute path"):
        check_command_line(["-m", "hydra/launcher=ray", "lr=0.1,0.2"])


@pytest.mark.slow
@needs_ray
@shadowed_preset
def test_ray_preset_joins_the_cluster_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    def ray(*overrides: str) -> dict:
        return _launcher("hydra/launcher=ray", *overrides, resolve=True)["ray"]

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # No address: ray.init picks (a Ray of its own). object_store_memory null: the plugin
    # would pass 75 MB, which ray.init refuses when it joins a running cluster.
    assert ray()["init"] == {"address": None, "object_store_memory": None}
    assert ray()["remote"] == {"num_cpus": 1, "num_gpus": 0}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray()["init"]["address"] == "10.0.0.5:6379"
    assert (
        ray("hydra.launcher.ray.init.address=10.0.0.6:6379")["init"]["address"] == "10.0.0.6:6379"
    )
    assert ray("hydra.launcher.ray.remote.num_gpus=1")["remote"] == {"num_cpus": 1, "num_gpus": 1}
