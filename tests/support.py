"""Helpers shared by the tests: configs built with Hydra's compose(), runs of the real loop."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from runner import compose, gate
from runner.config import Config

if TYPE_CHECKING:
    from mlflow import MlflowClient

REPO = Path(__file__).resolve().parent.parent


def make_config(*overrides: str) -> Config:
    """The checked Config that `python -m runner OVERRIDES...` would run.

    Hydra composes the config groups chosen (once per set of choices, about 0.12 s each);
    plain `key=value` settings are then applied with OmegaConf.update, as Hydra applies
    them last and as the batched launcher derives its jobs (test_config.py checks that the
    two give the same Config). Anything else goes through a whole composition."""
    try:
        cfg = _composed_then_updated(overrides)
    except Exception:  # not a plain setting, or a bad value: Hydra says what is wrong
        cfg = gate.compose_checked(list(overrides), {})
    return gate.typed(cfg)


@functools.cache
def _composed(groups: tuple[str, ...]) -> DictConfig:
    return gate.compose_checked(list(groups), {})


def _composed_then_updated(overrides: tuple[str, ...]) -> DictConfig:
    parsed = [gate.parse(o) for o in overrides]
    plain = [o for o in parsed if o.key_or_group not in compose.groups()]
    for o in plain:
        if o.is_sweep_override() or o.is_delete() or o.is_add() or o.is_force_add() \
                or o.key_or_group.startswith("hydra"):  # fmt: skip
            raise ValueError(o.input_line)
    groups = tuple(o.input_line for o in parsed if o not in plain)
    cfg = copy.deepcopy(_composed(groups))
    for o in plain:  # (struct mode: a key the schema lacks raises, and Hydra reports it)
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    return cfg


def member_of(s: Any, j: int, conf: Config, write: Callable[[pd.DataFrame], None]) -> Any:
    """Member j of a built Setup, with its config's settings, as runner/run.py makes it."""
    from runner.loop import Member

    check = conf.check_grad_tol if conf.check_grad else None
    return Member(s.optimizers[j], conf.epochs, write, conf.zero_grad, conf.stop.tol, check,
                  s.schedules[j], conf.stop.patience)  # fmt: skip


def train_setup(s: object, conf: Config, **kwargs: object) -> tuple[pd.DataFrame, object]:
    """Train a built Setup with the config's settings; the whole history and the Outcome."""
    from runner.loop import train

    chunks: list[pd.DataFrame] = []
    member = member_of(s, 0, conf, chunks.append)
    kwargs = {"val": s.val, "batches": s.batches, **kwargs}
    (outcome,) = train(s.model, s.loss_fn, [member], s.x, s.y, conf.chunk, **kwargs)
    history = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
    return history, outcome


def train_history(*overrides: str) -> tuple[pd.DataFrame, object]:
    """The whole per-epoch history of a run (no sinks), and its Setup after training."""
    from runner.run import build

    conf = make_config(*overrides)
    s = build([conf], Path.cwd())
    return train_setup(s, conf)[0], s


def runner_env() -> dict[str, str]:
    """This environment without settings that would change how Hydra or MLflow behave."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "MLFLOW_"))}


STARTED: list[subprocess.Popen[str]] = []  # ended by tests/conftest.py after each test


def start_runner(*args: str, cwd: Path, new_session: bool = False) -> subprocess.Popen[str]:
    """`python -m runner ARGS...` in the background (SIGINT reaches it as Ctrl-C would);
    with new_session, in a process group of its own that os.killpg can reach whole."""
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=runner_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )
    STARTED.append(process)
    return process


def kill_tree(pid: int) -> None:
    """A process and everything it started (the tracking process, launcher workers)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(family, timeout=10)


def wait_for_rows(csv: Path, rows: int = 1, timeout: float = 120) -> None:
    """Until the CSV holds at least `rows` data rows: woken by the file system's notice of
    each write to it (inotify, through watchdog), not by polling."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    reached = threading.Event()

    def check() -> None:
        if csv.is_file() and csv.read_text().count("\n") > rows:
            reached.set()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if os.fsdecode(event.src_path) == str(csv):
                check()

    watched = csv.parent  # the run's directory may not exist yet: watch from where it will
    while not watched.is_dir():
        watched = watched.parent
    observer = Observer()
    observer.schedule(Handler(), str(watched), recursive=True)
    observer.start()
    try:
        check()  # written before the watch began
        if not reached.wait(timeout):
            raise TimeoutError(f"{csv} did not reach {rows} rows")
    finally:
        observer.stop()
        observer.join()


def output_until(process: subprocess.Popen[bytes], pattern: str, log: Path, timeout: float) -> str:
    """The first match of `pattern` in what `process` writes to its stdout, read as it comes;
    everything is copied on to `log`, also after the match (a full pipe would block it)."""
    found: list[str] = []
    matched = threading.Event()

    def copy() -> None:
        with log.open("w") as out:
            for line in iter(process.stdout.readline, b""):
                text = line.decode(errors="replace")
                out.write(text)
                out.flush()
                if not found and (match := re.search(pattern, text)):
                    found.append(match.group(1))
                    matched.set()
        matched.set()  # it ended: nothing more will come

    threading.Thread(target=copy, daemon=True).start()
    if not matched.wait(timeout) or not found:
        raise RuntimeError(f"no {pattern!r} from {process.args[:3]}:\n{log.read_text()[-3000:]}")
    return found[0]


def start_dashboard(home: Path, port: int = 0) -> tuple[str, subprocess.Popen[bytes]]:
    """`python -m runner.dashboard` (a real `mlflow server` on 127.0.0.1) on home's store,
    created here if new; returns its URL once it answers. Port 0: the server binds a free
    port itself and says which (no port is picked here and freed for someone else to take)."""
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()  # creates the store
    process = subprocess.Popen(
        [sys.executable, "-m", "runner.dashboard", "--port", str(port)],
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers share the group, so stopping it stops all
    )
    try:
        url = output_until(process, r"Uvicorn running on (http://127\.0\.0\.1:\d+)",
                           home / "server.log", timeout=90)  # fmt: skip
        # Bound and listening: the request waits in the socket's backlog until a worker takes it
        urllib.request.urlopen(f"{url}/health", timeout=60)
    except (RuntimeError, OSError):
        stop_dashboard(process)
        raise
    return url, process


def stop_dashboard(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    process.wait(timeout=30)


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS...` in a subprocess, as a user types it; on a timeout it is
    killed with everything it started, and the test fails."""
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=runner_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def store(home: Path) -> MlflowClient:
    """The default SQLite store of runs started in `home`."""
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


def all_runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=5000)


def sweep_parent(client: MlflowClient, sweep_dir: Path) -> str:
    """The MLflow parent run of the sweep that wrote `sweep_dir`."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, f"tags.`runner.sweep_dir` = '{sweep_dir}'")
    return parent.info.run_id


def children(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000
    )


def update_doc_table(doc: Path, name: str, head: str, rows: list[str]) -> None:
    """Check the table `name` of `doc` against observed rows; RUNNER_WRITE_DOCS=1 rewrites it."""
    begin = f"<!-- {name} table: written by the tests -->\n"
    end = f"<!-- end of {name} table -->\n"
    text = doc.read_text()
    before, rest = text.split(begin)
    after = rest.split(end)[1]
    fresh = before + begin + head + "".join(rows) + end + after
    if os.environ.get("RUNNER_WRITE_DOCS"):
        doc.write_text(fresh)
        return
    assert text == fresh, f"{doc} is stale: run RUNNER_WRITE_DOCS=1 pytest tests/"


def run_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS` through its entry point (runner.cli.main) in this process:
    its exit code, stdout and stderr, as run_cli gives them, in a fraction of the time. For
    commands the gate answers (a run would start Hydra here). The working directory, argv,
    environment, signal handlers and stop state are put back."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from runner import cli, signals

    saved = (sys.argv, os.getcwd(), dict(os.environ), signals.STOPPER)
    handlers = {s: signal.getsignal(s) for s in signals.SIGNALS}
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    try:
        os.chdir(cwd)
        sys.argv = ["python -m runner", *args]
        signals.STOPPER = signals.Stopper()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as ended:
                code = ended.code if isinstance(ended.code, int) else int(ended.code is not None)
    finally:
        sys.argv, cwd_before, env, signals.STOPPER = saved
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(env)
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return subprocess.CompletedProcess(["python", "-m", "runner", *args], code, out.getvalue(),
                                       err.getvalue())  # fmt: skip


def gate_refuses(args: list[str] | tuple[str, ...], home: Path) -> bool:
    """Whether the gate itself refuses `python -m runner ARGS` run in home (then the command
    can be run in-process: Hydra never starts); False for what is found when a run starts."""
    from runner.config import ConfigError

    before = os.getcwd()
    os.chdir(home)
    try:
        gate.check(list(args), reserve=False)
    except ConfigError:
        return True
    finally:
        os.chdir(before)
    return False


def refused_in_one_line(
    args: list[str] | tuple[str, ...], home: Path, in_process: bool = False
) -> str:
    """Run `python -m runner ARGS` in home; check it was refused as a bad input is: exit 2,
    one line on stderr, nothing on stdout, nothing written. Returns that line, home as `.`.
    in_process: through the same entry point in this process (run_in_process)."""
    before = sorted(home.rglob("*"))
    done = (run_in_process if in_process else run_cli)(*args, cwd=home)
    assert done.returncode == 2, (args, done.stdout, done.stderr)
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()  # one line, so no traceback
    assert line.startswith("runner: error: ") and " is not allowed: " in line
    assert sorted(home.rglob("*")) == before  # no outputs/, no mlflow.db, nothing
    return line.replace(str(home), ".").replace("|", "\\|")


def each_in_a_home(tmp_path: Path, cases: list, observe: Callable[[Any, Path], str]) -> list[str]:
    """observe(case, home) for every case, each in a fresh directory of its own."""
    rows = []
    for i, case in enumerate(cases):
        home = tmp_path / str(i)
        home.mkdir()
        rows.append(observe(case, home))
    return rows
