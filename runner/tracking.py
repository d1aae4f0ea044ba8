"""MLflow in a process of its own, so that the training process never imports it.

Why a process: importing MLflow and opening its store takes about 2.4 s, and an SQLite
store takes about 11,000 metric points a second; both are Python work that would hold the
training process's interpreter. Started as soon as the command line has passed the gate,
the tracking process imports MLflow on the second core while the runner imports torch,
and it stores each chunk of metrics while the loop trains on.

The two sides share one pipe. The runner sends (function, arguments) and gets a Future;
the tracking process calls the functions below in order and answers each call, in order,
with its value or its error. It ignores Ctrl-C, SIGTERM and SIGHUP (the runner decides
how its runs end), and when the pipe closes - the runner ended, even by SIGKILL - it
ends every run it opened and the runner did not end as KILLED.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from runner.signals import STOPPER


class TrackingError(RuntimeError):
    """The store could not do what was asked; the message is one line."""


@dataclass(frozen=True)
class DataSpec:
    """The training data, logged as the run's input (an MLflow pandas dataset)."""

    key: str  # what the tracking process caches the dataset by (a hash of the points)
    name: str
    source: str  # the CSV file, or how the points were made
    is_file: bool
    columns: dict[str, np.ndarray] | None  # None: this tracking process has it cached


@dataclass(frozen=True)
class RunSpec:
    """What an MLflow run is opened with."""

    tracking_uri: str
    experiment: str
    name: str
    params: dict[str, str]
    tags: dict[str, str]
    # A tag of `tags`: the newest run of the experiment with the same value is continued
    # (RUNNING again) instead of a new one - a resumed search's parent run.
    resume_by: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """The trained model, logged as an MLflow pyfunc model (runner/pyfunc_model.py)."""

    weights: dict[str, float]  # input column -> weight
    bias: float
    example: dict[str, list[float]]  # a few training inputs: the model's input example


@dataclass(frozen=True)
class Ending:
    """How an MLflow run is ended: its status and what it gets last."""

    status: str  # FINISHED, FAILED or KILLED
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # artifacts, logged at the run's root
    texts: dict[str, str] = field(default_factory=dict)  # artifact name -> content
    model: ModelSpec | None = None  # logged as the run's MLflow model, under "model"


# --- the tracking process's side: called in order, one at a time ------------------------

_clients: dict[str, Any] = {}  # tracking URI -> MlflowClient
_experiments: dict[tuple[str, str], str] = {}  # (URI, name) -> experiment id
_open_runs: dict[str, str] = {}  # run id -> URI: the runs to end KILLED if the runner dies
_failed: dict[str, str] = {}  # run id -> why a chunk of its metrics could not be stored
_datasets: dict[str, Any] = {}  # DataSpec.key -> the dataset, as MLflow logs it
_artifact_uris: dict[str, str] = {}  # run id -> its artifact root, as its creation gave it


def _client(uri: str) -> Any:
    if uri not in _clients:
        from mlflow import MlflowClient

        path = _sqlite_file(uri)
        if path is None:
            _clients[uri] = MlflowClient(uri)
        else:
            from filelock import FileLock

            # Two runs started at once on a new store would both create its tables.
            with FileLock(f"{path}.lock", timeout=60):
                client = MlflowClient(uri)
                client.search_experiments(max_results=1)  # creates or migrates the store
            _clients[uri] = client
    return _clients[uri]


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _experiment_id(uri: str, name: str) -> str:
    if (uri, name) not in _experiments:
        client = _client(uri)
        found = client.get_experiment_by_name(name)
        if found is None:
            db = _sqlite_file(uri)
            # Artifacts of a local store go beside its database file, wherever the run started.
            location = None if db is None else (db.parent / "mlartifacts").as_uri()
            try:
                _experiments[uri, name] = client.create_experiment(name, location)
            except Exception:  # a parallel job created it between our lookup and our create
                _experiments[uri, name] = client.get_experiment_by_name(name).experiment_id
        else:
            _experiments[uri, name] = found.experiment_id
    return _experiments[uri, name]


def open_run(spec: RunSpec) -> str:
    """Create the run with its tags and params; return its id."""
    from mlflow.entities import Param, RunTag
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from runner.processes import process_tags

    client = _client(spec.tracking_uri)
    experiment = _experiment_id(spec.tracking_uri, spec.experiment)
    # This process writes the run and ends it: `runner.cleanup` checks that it lives.
    tags = spec.tags | process_tags()
    if spec.resume_by and (earlier := _run_tagged(client, experiment, spec.resume_by,
                                                    tags[spec.resume_by])):  # fmt: skip
        run_id = earlier
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    else:
        info = client.create_run(experiment, run_name=spec.name, tags=tags).info
        run_id, _artifact_uris[info.run_id] = info.run_id, info.artifact_uri
    _open_runs[run_id] = spec.tracking_uri
    params = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in spec.params.items()]
    if params:
        client.log_batch(run_id, params=params)
    return run_id


def _run_tagged(client: Any, experiment: str, key: str, value: str) -> str | None:
    """The newest run of the experiment tagged key=value (value: a plain key, no quotes)."""
    runs = client.search_runs([experiment], f"tags.`{key}` = '{value}'", max_results=1,
                              order_by=["attributes.start_time DESC"])  # fmt: skip
    return runs[0].info.run_id if runs else None


def log_metrics(uri: str, run_id: str, epochs: np.ndarray, columns: dict[str, np.ndarray]) -> int:
    """One chunk of per-epoch metrics, step = epoch; returns how many points it stored."""
    from mlflow.entities import Metric

    now, steps = int(time.time() * 1000), epochs.tolist()
    points = [
        Metric(name, value, now, step)
        for name, values in columns.items()
        for step, value in zip(steps, values.tolist(), strict=True)
    ]
    try:
        _client(uri).log_batch(run_id, metrics=points)  # the client splits it into batches
    except Exception as err:
        _failed[run_id] = str(err).strip().splitlines()[0][:500] if str(err).strip() else "?"
        raise
    return len(points)


def log_dataset(uri: str, run_id: str, data: DataSpec) -> None:
    """The training data as the run's input: the dashboard's Dataset column, and a digest
    that finds every run on the same data (`dataset.digest = '...'`)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    if data.key not in _datasets:
        import pandas as pd
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.data.sources import LocalArtifactDatasetSource  # (made when it is imported)

        source = (
            LocalArtifactDatasetSource(data.source)
            if data.is_file
            else CodeDatasetSource({"runner.data": data.source})
        )
        dataset = from_pandas(pd.DataFrame(data.columns), source=source, name=data.name)
        _datasets[data.key] = dataset._to_mlflow_entity()
    inputs = [DatasetInput(_datasets[data.key], [InputTag("mlflow.data.context", "training")])]
    try:
        _client(uri).log_inputs(run_id, datasets=inputs)
    except MlflowException as err:
        # The jobs of a parallel sweep log the same new dataset at once: MLflow looks it up,
        # then inserts it, and the later insert breaks the unique key (sqlite3.IntegrityError,
        # seen with the joblib launcher). Nothing was stored; the second try finds the row.
        if not any(word in str(err) for word in ("IntegrityError", "UNIQUE", "Duplicate")):
            raise
        _client(uri).log_inputs(run_id, datasets=inputs)


def end_run(uri: str, run_id: str, ending: Ending) -> None:
    """Final metrics, tags and artifacts, then the status."""
    from mlflow.entities import Metric, RunTag

    client = _client(uri)
    if run_id in _failed:  # a run that lost metrics is not whole, however its training ended
        ending = Ending("FAILED", tags={"runner.tracking_error": _failed.pop(run_id)})
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in ending.metrics.items()]
    tags = [RunTag(k, v) for k, v in ending.tags.items()]
    if metrics or tags:
        client.log_batch(run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as tmp:
        paths = list(ending.files)
        for name, text in ending.texts.items():
            (Path(tmp) / name).write_text(text)
            paths.insert(0, str(Path(tmp) / name))
        if paths:
            # The run's artifact store, resolved once (log_artifact per file would look the
            # run up in the database again each time; a run this process created is known).
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            root = _artifact_uris.get(run_id) or client.get_run(run_id).info.artifact_uri
            repo = get_artifact_repository(root, uri)
            for path in paths:
                repo.log_artifact(path)
            if ending.model is not None:
                repo.log_artifacts(_saved_model(ending.model, Path(tmp)), "model")
    client.set_terminated(run_id, ending.status)
    _open_runs.pop(run_id, None)
    _artifact_uris.pop(run_id, None)


def _saved_model(model: ModelSpec, tmp: Path) -> str:
    """The run's pyfunc model, saved as code with its parameters as config (cheaper than
    log_model: no model entity to create, and no copy of the run's metric history)."""
    import logging

    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    # It says "Validating input example against model signature" on the user's terminal.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)

    inputs = Schema([ColSpec("double", column) for column in model.weights])
    signature = ModelSignature(inputs, Schema([TensorSpec(np.dtype(np.float64), (-1,))]))
    path = tmp / "model"
    mlflow.pyfunc.save_model(
        path,
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        model_config={"weights": model.weights, "bias": model.bias},
        signature=signature,
        input_example=pd.DataFrame(model.example),
        pip_requirements=[f"mlflow=={mlflow.__version__}", "pandas", "numpy"],
    )
    return str(path)


def finished_runs(uri: str, experiment: str, digests: list[str]) -> dict[str, dict[str, Any]]:
    """The newest FINISHED run of each digest (tag runner.digest) in the experiment: its id,
    metrics, params and tags, as plain dicts."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = {}
    for digest in dict.fromkeys(digests):  # (MLflow's filter has no IN for tags: one each)
        query = f"tags.`runner.digest` = '{digest}' and attributes.status = 'FINISHED'"
        latest = client.search_runs([found.experiment_id], query, max_results=1,
                                    order_by=["attributes.start_time DESC"])  # fmt: skip
        for run in latest:
            data = run.data
            runs[digest] = {"run_id": run.info.run_id, "metrics": dict(data.metrics),
                            "params": dict(data.params), "tags": dict(data.tags)}  # fmt: skip
    return runs


def end_children(uri: str, parent_id: str, status: str) -> int:
    """End the sweep's child runs that are still RUNNING (their process was killed)."""
    client = _client(uri)
    experiment = client.get_run(parent_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
    stuck = client.search_runs([experiment], query, max_results=50_000)
    for run in stuck:
        client.set_terminated(run.info.run_id, status)
    return len(stuck)


def _ready() -> None:
    """Import what every run needs, while the runner imports torch."""
    import logging

    from mlflow import MlflowClient  # noqa: F401
    from mlflow.store.tracking import sqlalchemy_store  # noqa: F401 - the SQLite store's code

    # MLflow's own logger would print a traceback for each retry of a store that is locked,
    # deleted or gone (hundreds of lines), and its table creation on a new store: the runner
    # says what matters in one line, from this process's answers.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def serve(calls_fd: int, answers_fd: int) -> None:
    """The tracking process: answer each call, in order, until the runner is gone."""
    calls = Connection(calls_fd, writable=False)
    answers = Connection(answers_fd, readable=False)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)  # the runner decides how its runs end
    while True:
        try:
            function, args = calls.recv()
        except (EOFError, OSError):
            break  # the runner ended, maybe by SIGKILL
        try:
            answer = (True, function(*args))
        except Exception as err:
            text = str(err).strip().splitlines()
            answer = (False, f"{type(err).__name__}: {text[0] if text else ''}"[:500])
        try:
            answers.send(answer)
        except OSError:
            break
    for run_id, uri in list(_open_runs.items()):  # no run stays RUNNING
        try:
            _client(uri).set_terminated(run_id, "KILLED")
        except Exception as err:  # one line: the store's own words can run to a page
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            print(f"runner: error: could not end MLflow run {run_id}: {why}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(0)  # every write is committed; skip tearing MLflow's modules down (about 1 s)


# --- the runner's side ---------------------------------------------------------------------

# Once a stop signal came, what the store still owes may wait this long, not the minutes a
# busy store is given otherwise: a store that is locked or stopped (SIGSTOP) then costs the
# stop this deadline and the run its MLflow record (FAILED), never its CSV.
STOPPING_DEADLINE = 10.0

# A deep backlog of metric chunks only lengthens a stop (the store sets a long run's wall
# time anyway): at most about a second of the store's work waits, 11,000 points here.
BACKLOG_POINTS = 11_000


class Tracker:
    """The runner's end of the pipe: calls become Futures, answered in the order sent."""

    def __init__(self) -> None:
        # One pipe each way: closing ours of the first is the tracking process's EOF, while
        # a thread of ours still waits on the second.
        calls_in, calls_out = os.pipe()
        answers_in, answers_out = os.pipe()
        # A plain `python -c` (not multiprocessing): it works the same from a parallel
        # launcher's worker, whatever start method that worker was given.
        code = f"from runner.tracking import serve; serve({calls_in}, {answers_out})"
        package_root = Path(__file__).resolve().parent.parent  # finds this very package
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=package_root,
                                        pass_fds=(calls_in, answers_out))  # fmt: skip
        os.close(calls_in)  # only the tracking process holds these ends: EOF there when we go
        os.close(answers_out)
        self.conn = Connection(calls_out, readable=False)
        self.answers = Connection(answers_in, writable=False)
        self.pending: collections.deque[tuple[Future[Any], int]] = collections.deque()
        self.backlog = 0  # metric points sent and not yet stored
        self.lock = threading.Lock()
        self.dead: str | None = None
        self.datasets: set[str] = set()  # DataSpec keys sent whole: the process caches them
        self.reader = threading.Thread(target=self._read_answers, name="tracking-answers",
                                       daemon=True)  # fmt: skip
        self.reader.start()
        self.call_async(_ready)

    def call_async(self, function: Callable[..., Any], *args: Any, points: int = 0) -> Future:
        """Send a call; its Future holds the answer, or a TrackingError."""
        future: Future[Any] = Future()
        with self.lock:
            if self.dead:
                future.set_exception(TrackingError(self.dead))
                return future
            self.pending.append((future, points))
            self.backlog += points
            try:
                self.conn.send((function, args))
            except OSError:
                self._die("the tracking process is gone")
        return future

    def call(self, function: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """Send a call and wait for its answer."""
        return self.wait(self.call_async(function, *args), timeout)

    def wait(self, future: Future, timeout: float) -> Any:
        """The answer of a call sent earlier, waiting at most `timeout` seconds, or
        STOPPING_DEADLINE once a stop signal came (also while this wait was on). A store that
        does not answer costs that long, not minutes: the tracking process, stuck in it, is
        let go (a later call starts a fresh one)."""
        start, stopped = time.monotonic(), None
        while True:
            try:
                return future.result(timeout=0.25)  # (a slice: a stop is seen within it)
            except FutureTimeout:
                now = time.monotonic()
                if stopped is None and STOPPER.stop.is_set():
                    stopped = now
                late = stopped is not None and now - stopped >= STOPPING_DEADLINE
                if now - start >= timeout or late:
                    break
        self.process.kill()
        why = f"the MLflow store did not answer within {time.monotonic() - start:.0f} s"
        self._die(why)
        raise TrackingError(why)

    def send_metrics(self, uri: str, run_id: str, epochs: np.ndarray,
                     columns: dict[str, np.ndarray], timeout: float) -> Future:  # fmt: skip
        """Hand a chunk over without waiting, unless about a second of work waits already."""
        points = len(epochs) * len(columns)
        while self.backlog + points > BACKLOG_POINTS and self.pending:
            try:
                self.wait(self.pending[0][0], timeout)
            except TrackingError:
                break  # the sink is told at its next write
        return self.call_async(log_metrics, uri, run_id, epochs, columns, points=points)

    def _read_answers(self) -> None:
        while True:
            try:
                ok, value = self.answers.recv()
            except (EOFError, OSError):
                self._die("the tracking process ended unexpectedly (killed?)")
                return
            with self.lock:
                if not self.pending:  # failed already: a send found the process gone first
                    continue
                future, points = self.pending.popleft()
                self.backlog -= points
            if ok:
                future.set_result(value)
            else:
                future.set_exception(TrackingError(value))

    def _die(self, why: str) -> None:
        if self.dead is None:
            self.dead = why
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(TrackingError(why))
        self.backlog = 0


_trackers: dict[int, Tracker] = {}


def tracker(lane: int = 0) -> Tracker:
    """This process's tracking process of `lane`, started on first use; a dead one is
    replaced. A batch of jobs spreads its runs over two lanes (runner/run.py): their store
    work is most of a batched sweep's time, and most of it is MLflow's own Python, which
    two processes do side by side (SQLite itself takes one writer at a time)."""
    if lane not in _trackers or _trackers[lane].dead:
        _trackers[lane] = Tracker()
    return _trackers[lane]


def started() -> bool:
    return any(not t.dead for t in _trackers.values())
