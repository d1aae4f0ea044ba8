"""`python -m runner` as a user runs it: real subprocesses in a fresh directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from support import run_cli, runner_env
from test_loop import SEED_002

from runner.signals import Stopper


@pytest.mark.slow
def test_documented_command_end_to_end(tmp_path: Path) -> None:
    done = run_cli("optimizer=sgd", "lr=0.05", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "mlflow.db").is_file()  # the default store, in the launch directory
    run_id = re.search(r"mlflow run ([0-9a-f]{32})", done.stdout).group(1)
    csv_path = Path(re.search(r"csv +(\S+)", done.stdout).group(1))
    assert re.search(r"50 epochs, final loss [0-9.e-]+ \(a=[0-9.]+, b=[0-9.]+\)", done.stdout)
    assert csv_path.parent.parent.parent == tmp_path / "outputs"  # Hydra's run directory
    assert len(pd.read_csv(csv_path)) == 50

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED"
    assert found.info.run_name == "optimizer=sgd,lr=0.05"
    assert found.data.tags["hydra.output_dir"] == str(csv_path.parent)
    assert re.fullmatch(r"[0-9a-f]{40}", found.data.tags["mlflow.source.git.commit"])
    assert found.data.tags["runner.command"] == "python -m runner optimizer=sgd lr=0.05"
    # The job's log holds what the console showed (Hydra's runner.log).
    log = (csv_path.parent / "runner.log").read_text()
    assert "50 epochs, final loss" in log and f"mlflow run {run_id}" in log
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == pd.read_csv(csv_path)[
        "loss"
    ].tolist()


@pytest.mark.slow
def test_seed_002_preset_prints_and_records_the_notebook(tmp_path: Path) -> None:
    done = run_cli("experiment=seed_002", "mlflow.enabled=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for epoch, (loss, a, b) in enumerate(SEED_002[:11]):
        assert lines[epoch].startswith(f"Epoch {epoch}: loss={loss}, a={a}, b={b}, grad_a=")
    assert not (tmp_path / "mlflow.db").exists()


def test_checking_the_command_line_imports_neither_torch_nor_mlflow() -> None:
    code = (
        "import sys; from runner.gate import check;"
        "check(['optimizer=sgd', 'lr=0.05'], reserve=False);"
        "print('torch' in sys.modules, 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [["--help"], ["epochs=5", "plots=false", "mlflow.enabled=false"],
     ["-m", "epochs=5", "lr=0.1,0.2", "mlflow.enabled=false"]],
    ids=["help", "run", "sweep"],
)  # fmt: skip
def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path, args: list[str]) -> None:
    """`python -m runner ... | head -1`: the rest of the lines go nowhere, quietly."""
    process = subprocess.Popen([sys.executable, "-m", "runner", *args],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=runner_env())  # fmt: skip
    assert process.stdout.readline()  # what `head -1` reads, before it exits
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "Logging error" not in err, err


def test_a_ctrl_c_while_the_runner_imports_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy

    from runner import cli

    def interrupted() -> None:
        raise KeyboardInterrupt  # (before the runner's own handlers: Python's default)

    monkeypatch.setattr(cli, "main", interrupted)
    with pytest.raises(SystemExit) as ended:
        runpy.run_module("runner", run_name="__main__")
    assert ended.value.code == 130
    assert capsys.readouterr().err == (
        "runner: stopped by SIGINT before it started: nothing was run\n"
    )


def _main_in_process(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Stopper:
    """cli.main's stop signals go to a fresh Stopper, its logging and environment are put
    back (pytest keeps its own handlers)."""
    from runner import cli, signals

    stopper = signals.Stopper()
    monkeypatch.setattr(cli, "install", lambda: stopper)
    monkeypatch.setattr(cli, "console", lambda: None)
    for name in (cli.MAIN_PID, cli.COMMAND, "HYDRA_FULL_ERROR"):
        monkeypatch.setenv(name, "")
    monkeypatch.setattr(sys, "argv", ["runner", *argv])
    return stopper


def test_a_stop_signal_while_the_command_line_is_checked_is_honored_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gate is not interrupted midway (a half-done composition): the signal is noted,
    and once the check is done the runner ends in one line, leaving no directory."""
    import signal

    from runner import cli, gate

    monkeypatch.chdir(tmp_path)
    stopper = _main_in_process(monkeypatch, ["lr=0.1", "hydra.run.dir=out"])
    check = gate.check

    def signalled(argv: list[str]) -> gate.Plan:
        stopper.handle(signal.SIGTERM, None)  # does not raise: the gate goes on
        return check(argv)

    monkeypatch.setattr(gate, "check", signalled)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 143
    assert capsys.readouterr().err == (
        "runner: stopped by SIGTERM before it started: nothing was run\n"
    )
    assert list(tmp_path.iterdir()) == []  # the reserved directory is gone


def test_a_stop_signal_while_the_run_is_set_up_ends_it_before_it_writes_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra has made the run's directory and the run loads its data when the signal comes:
    it is noted, not raised midway, and honored before the run writes a row."""
    import signal

    from runner import cli, run

    monkeypatch.chdir(tmp_path)
    stopper = _main_in_process(monkeypatch, ["hydra.run.dir=out", "mlflow.enabled=false"])
    monkeypatch.setattr(run, "STOPPER", stopper)  # the run's loop polls the same stopper
    load = run.load_arrays

    def signalled(*args: object) -> object:
        stopper.handle(signal.SIGTERM, None)  # does not raise: the set-up goes on
        return load(*args)

    monkeypatch.setattr(run, "load_arrays", signalled)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 143
    assert capsys.readouterr().err.endswith(
        "runner: stopped by SIGTERM before it started: nothing was run\n"
    )
    assert list(tmp_path.iterdir()) == []  # not even Hydra's .hydra/ and runner.log


def test_a_sweep_stopped_before_its_first_job_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli, gate

    def interrupted(plan: gate.Plan) -> None:
        # A Ctrl-C while the jobs are composed: Hydra's multirun.yaml is written, and the
        # summary of no job, but no job's directory.
        assert plan.out_dir is not None
        (plan.out_dir / "multirun.yaml").write_text("hydra: {}\n")
        (plan.out_dir / "summary.csv").write_text("job,overrides,status\n")
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_sweep", interrupted)
    argv = ["-m", "lr=0.1,0.2", "mlflow.enabled=false", "hydra.sweep.dir=sweep"]
    _main_in_process(monkeypatch, argv)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 130
    assert capsys.readouterr().err.endswith(
        "runner: sweep stopped by SIGINT before its first job\n"
    )
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["lr=0.1", "--help"], ["-m", "-h"]])
def test_help_wherever_it_is_asked_for(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli

    monkeypatch.setattr(sys, "argv", ["runner", *argv])
    cli.main()  # returns: no run, no SystemExit
    assert capsys.readouterr().out.startswith("usage: python -m runner [-m] [key=value ...]")


def test_a_stop_signal_while_a_large_sweep_is_checked_ends_the_check_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checking a sweep's values can take seconds: a stop noted meanwhile ends it at the next
    value, in one line, with nothing reserved."""
    import signal

    from runner import cli, signals, sweep_checks

    monkeypatch.chdir(tmp_path)
    stopper = _main_in_process(monkeypatch, ["-m", "lr=range(0.0001,1.0001,0.0001)"])
    monkeypatch.setattr(signals, "STOPPER", stopper)
    checked: list[object] = []
    values = sweep_checks._values_to_check

    def signalled(o: object) -> list[object]:
        stopper.handle(signal.SIGINT, None)  # noted, not raised
        found = values(o)
        checked.extend(found)
        return found

    monkeypatch.setattr(sweep_checks, "_values_to_check", signalled)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 130
    assert (
        capsys.readouterr().err == "runner: stopped by SIGINT before it started: nothing was run\n"
    )
    assert len(checked) == 10_000  # listed, but not one composed or validated after the stop
    assert list(tmp_path.iterdir()) == []


def test_a_directory_another_live_command_writes_to_is_refused(tmp_path: Path) -> None:
    """Two sweeps started together with the same hydra.sweep.dir: the second is refused (the
    first holds a lock on the directory for as long as its process lives)."""
    from runner import gate
    from runner.config import ConfigError

    argv = ["-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "lr=0.1,0.2", "mlflow.enabled=false"]
    first = gate.check(argv)
    try:
        with pytest.raises(ConfigError, match="a directory no other live run or sweep writes to"):
            gate.check(argv)  # (an flock is per open file: this process counts as another)
    finally:
        gate.release(first.out_dir)
    second = gate.check(argv)  # released: free again
    gate.release(second.out_dir)


@pytest.mark.slow
def test_code_beside_the_command_is_not_imported(tmp_path: Path) -> None:
    """A hydra_plugins/ folder where `python -m runner` starts is not plugin code (Python puts
    that directory first on the import path; the runner takes it off)."""
    marker = tmp_path / "imported"
    plugin = tmp_path / "hydra_plugins" / "evil"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(f"open({str(marker)!r}, 'w')\n")
    refused = run_cli("lr=0", cwd=tmp_path)
    ran = run_cli("-m", "lr=0.1,0.2", "epochs=2", "mlflow.enabled=false", cwd=tmp_path)
    assert refused.returncode == 2 and ran.returncode == 0, ran.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_real_signal_while_a_large_sweep_is_checked_ends_it_in_a_moment(tmp_path: Path) -> None:
    import signal
    import time

    from support import start_runner

    process = start_runner("-m", "lr=range(0.00001,1.00001,0.00001)", "sweep.max_jobs=100000",
                           cwd=tmp_path)  # fmt: skip
    time.sleep(2.0)  # imported, checking the 100,000 values (about 20 s of work)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    waited = time.monotonic() - sent
    assert process.returncode == 143, err
    assert err == "runner: stopped by SIGTERM before it started: nothing was run\n", waited
    assert list(tmp_path.iterdir()) == []
