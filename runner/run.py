"""One run, start to end: build -> open the sinks -> train -> close the sinks with the outcome.

config -> data tensors -> model -> loss -> optimizer -> epoch loop -> sinks. The settings
were checked by the gate (runner/gate.py) before anything was written; what can still go
wrong here is the data file, the machine or the store. Whatever happens, every sink is
closed with how the run ended, so no MLflow run stays RUNNING.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from runner.analysis import Optimum, add_distances, optimum
from runner.config import Config, ConfigError, DataKind, flat, plain
from runner.data import Points, feature_names, load_arrays, split, to_tensors
from runner.loop import How, Member, Outcome, history_columns, split_steps, train
from runner.losses import Loss, build_loss
from runner.minibatch import MiniBatches
from runner.mlflow_sink import MlflowSink, StoreUnavailable, end_the_unended
from runner.model import Linear, build_model
from runner.optimizers import Optimizer, build_optimizer, stability_limit_applies
from runner.provenance import data_digest, record, run_digest
from runner.reuse import finished_twins
from runner.schedules import Schedule, build_schedule
from runner.search import Reporter, Study, reporting
from runner.signals import STOPPER, NotStarted
from runner.sinks import ConsoleSink, CsvSink, ProgressSink, Sink
from runner.store import default_tracking_uri, redact_text, run_name, server_problem
from runner.tracking import DataSpec, Ending, ModelSpec, RunSpec, tracker

log = logging.getLogger("runner")

# From this many jobs, a batch's MLflow runs are stored by two tracking processes: the
# second one's start (importing MLflow, about 2.5 s of CPU) pays off.
TWO_LANES = 16
# Data logged as the run's MLflow input up to this many cells (points x columns): MLflow's
# pandas dataset looks at every cell for its digest, about 1.2 s a million cells.
DATASET_CELLS_MAX = 200_000


@dataclass(frozen=True)
class RunContext:
    """What a run needs to know about its surroundings, decided in one place (runner/cli.py)."""

    launch_dir: Path  # where the command was started: the default store lives here
    run_dir: Path  # the run's own directory
    overrides: tuple[str, ...] = ()  # the command line's settings: the run's name
    command: str = "python -m runner"  # the command line, for the reproducibility record
    sweep_parent: str | None = None  # the sweep's MLflow run: this run is its child
    owns_terminal: bool = True  # console lines and a progress bar (not in parallel workers)
    in_sweep: bool = False  # plots=null draws a single run's pictures, not a sweep job's
    reuse: bool = False  # a grid sweep's job: an identical FINISHED run is reused, not re-run
    log_file: Path | None = None  # its own log, where no launcher set one up (a batch)
    study: Study | None = None  # a search's trial: the study it reports to (runner/search.py)
    trial: int | None = None  # ... and its number there


@dataclass
class Setup:
    """What the members of a batch share, and each member's model and optimizer."""

    model: Linear  # one member per job (runner/model.py)
    loss_fn: Loss
    optimizers: list[Optimizer]  # member j's, stepping member j's parameters only
    schedules: list[Schedule | None]  # member j's lr schedule; None: a constant lr
    x: torch.Tensor
    y: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None  # the held-out points (data.val_fraction)
    batches: MiniBatches | None  # batch_size: each epoch's steps; None: one step on all
    points: tuple[np.ndarray, np.ndarray]  # the training data on the host, for the analysis
    best: Optimum  # the exact least-squares solution of this data


def build(
    confs: list[Config],
    launch_dir: Path | None,
    points: tuple[np.ndarray, np.ndarray] | None = None,
) -> Setup:
    """Data tensors, model, loss and optimizers on the configured device, for jobs that
    share their data, model kind, loss, optimizer kind and device (runner/batch.py); the
    data are loaded unless given (as load_arrays gives them)."""
    conf = confs[0]
    device = resolve_device(conf.device)
    if conf.deterministic:
        torch.use_deterministic_algorithms(True)
    if points is None:
        points = load_arrays(conf.data, conf.seed, launch_dir or Path.cwd())
    seed = conf.data.seed if conf.data.seed is not None else conf.seed
    points, held_out = split(*points, conf.data.val_fraction, seed)
    x, y = to_tensors(*points, device)
    val = to_tensors(*held_out, device) if held_out is not None else None
    features = len(points[0])  # x: [features, points]
    model = build_model([c.model for c in confs], [c.seed for c in confs], features, device)
    loss_fn = build_loss(conf.loss.name)
    optimizers = [build_optimizer(c.optimizer, model.member(j), c.lr) for j, c in enumerate(confs)]
    schedules = [
        build_schedule(c.schedule, o, c.epochs) for c, o in zip(confs, optimizers, strict=True)
    ]
    best = optimum(*points, conf.model.bias)
    batches = _minibatches(confs, len(points[1]), device)
    return Setup(model, loss_fn, optimizers, schedules, x, y, val, batches, points, best)


def _minibatches(confs: list[Config], n: int, device: torch.device) -> MiniBatches | None:
    conf = confs[0]
    if conf.batch_size is None:
        return None
    if conf.drop_last and conf.batch_size > n:
        allowed = f"at most {n} (the training points) with drop_last=true, or drop_last=false"
        raise ConfigError("batch_size", conf.batch_size, allowed)
    seeds = [c.seed for c in confs]  # each member shuffles with its own seed
    return MiniBatches(conf.batch_size, conf.shuffle, conf.drop_last, seeds, n, device,
                       conf.log_steps)  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA when torch sees a GPU; `cuda` without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "cpu or auto (torch sees no CUDA device here)")
    return torch.device(name)


@dataclass
class Result:
    """How a run ended; written to result.json in the run directory for the sweep's summary."""

    status: str  # FINISHED, DIVERGED, PRUNED, FAILED or KILLED
    epochs_run: int
    final_loss: float  # inf unless FINISHED, so a sweeper ranks it last
    final: dict[str, float] = field(default_factory=dict)  # final_a, final_b, ...
    lr: float = math.nan
    # 2 / largest eigenvalue of the loss's Hessian: the limit of plain gradient descent (NaN
    # for momentum and Adam, whose limits are other numbers)
    stable_lr_max: float = math.nan
    condition_number: float = math.nan  # its largest / smallest eigenvalue
    optimum_loss: float = math.nan
    mlflow_run_id: str | None = None
    diverged_at_epoch: int | None = None
    converged_at_epoch: int | None = None  # stop.tol ended the run early
    stalled_at_epoch: int | None = None  # stop.patience ended it: val_loss stopped improving
    pruned_at_epoch: int | None = None  # a search's trial its pruner stopped ...
    pruned_by: str | None = None  # ... "pruner", or "stability" (lr >= 2/λmax: not trained)
    failure: str | None = None  # why a FAILED run failed
    tracking_error: str | None = None  # MLflow failed; the CSV went on alone
    signal: int | None = None  # the stop signal of a KILLED run
    reused: bool = False  # an identical FINISHED run was found in the store: not run again


def run(conf: Config, ctx: RunContext) -> Result:
    """Train once, feed the sinks, and say how it ended: a batch of one."""
    result = run_batch([conf], [ctx])[0]
    if ctx.sweep_parent is None:  # (a sweep does this once, at its end)
        end_the_unended(retry=not STOPPER.stop.is_set())
    return result


class JobRun:
    """One job of a batch: its sinks, its Result, and how its MLflow run ends."""

    def __init__(self, conf: Config, ctx: RunContext, s: Setup, alone: bool, digest: str) -> None:
        self.conf, self.ctx, self.best = conf, ctx, s.best
        self.csv_path = ctx.run_dir / "metrics.csv"
        self.mlflow: MlflowSink | None = None
        self.sinks: list[Sink] = []
        self.names = s.model.names()
        self.steps = s.batches.steps if s.batches is not None and s.batches.log else 0
        self.steps_csv: CsvSink | None = None  # log_steps: steps.csv
        self.alone = alone  # a batch of one: the console and the progress bar are its own
        self.digest = digest
        best = s.best
        limit = best.stable_lr_max if plain_gradient_descent(conf) else math.nan
        self.result = Result("FAILED", 0, math.inf, lr=conf.lr, stable_lr_max=limit,
                             condition_number=best.condition, optimum_loss=best.loss)  # fmt: skip
        self.ending = Ending("FAILED")

    def request_store(self, s: Setup, lane: int, data: DataSpec | None) -> None:
        """Ask for the MLflow run (every job of a batch asks before the first waits)."""
        self.mlflow = _mlflow_sink(self.conf, s, self.ctx, lane, data, self.digest)
        if self.mlflow is not None:
            self.mlflow.request()

    def open_store(self) -> None:
        """The store first: a run whose store cannot be opened writes nothing at all."""
        if self.mlflow is None:
            return
        try:
            self.mlflow.open()
        except StoreUnavailable as err:
            if self.ctx.sweep_parent is None:
                raise  # a single run stops before it writes anything
            # A sweep goes on: this job trains with the CSV alone, and ends FAILED for it.
            log.error(f"runner: error: {err}; this job trains with the CSV alone")
            self.mlflow.error, self.mlflow.ended = str(err), True
        self.result.mlflow_run_id = self.mlflow.run_id

    def open_sinks(self, s: Setup) -> None:
        check = self.conf.check_grad
        scheduled = self.conf.schedule.name != "constant"
        columns = history_columns(s.model.names(), check, scheduled, s.val is not None,
                                  s.batches is not None)  # fmt: skip
        columns += ["gap", "distance"]
        csv = CsvSink(self.csv_path, columns)  # first: the record that must never miss a row
        self.sinks = [csv]
        if self.mlflow and self.mlflow.run_id:
            self.sinks.append(self.mlflow)
        if self.alone and self.ctx.owns_terminal and self.conf.print_every > 0:
            self.sinks.append(ConsoleSink(self.conf.print_every))
        if self.alone and self.ctx.owns_terminal and self.conf.progress and os.isatty(2):
            self.sinks.append(ProgressSink(self.conf.epochs))
        for sink in self.sinks:
            if sink is not self.mlflow:  # (the MLflow run is open already)
                sink.open()
        if self.steps:
            self.steps_csv = CsvSink(self.ctx.run_dir / "steps.csv",
                                     ["step", "epoch", "step_loss", *self.names])  # fmt: skip
            self.steps_csv.open()

    def member(self, optimizer: Optimizer, schedule: Schedule | None) -> Member:
        conf, ctx = self.conf, self.ctx
        check = conf.check_grad_tol if conf.check_grad else None
        report, skip = None, None
        if ctx.study is not None and ctx.trial is not None:
            if _diverges(conf, self.best):  # the maths says so: no need to train it
                skip = Outcome(How.pruned, epochs=0, detail="stability")
            else:
                every, _ = reporting(ctx.study, conf.epochs, conf.chunk)
                run_id = self.mlflow.run_id if self.mlflow is not None else None
                report = Reporter(ctx.study, ctx.trial, every, run_id)
        return Member(optimizer, conf.epochs, self.write, conf.zero_grad, conf.stop.tol, check,
                      schedule, conf.stop.patience, report, skip)  # fmt: skip

    def write(self, chunk: pd.DataFrame) -> None:
        if self.steps_csv is not None:  # the steps ride along in their epochs' rows
            chunk, steps = split_steps(chunk, self.names, self.steps)
            self.steps_csv.write(steps)
            if self.mlflow in self.sinks:
                self.mlflow.write_steps(steps)
        chunk = add_distances(chunk, self.best)
        for sink in self.sinks:  # the CSV first: a full disk stops the row everywhere
            sink.write(chunk)
        self.result.epochs_run += len(chunk)

    def fail(self, err: BaseException) -> None:
        """Outside training: a stop between jobs (KILLED), or an error (FAILED)."""
        if isinstance(err, KeyboardInterrupt):
            self.result.status, self.result.signal = "KILLED", getattr(err, "signum", 2)
            self.ending = Ending("KILLED")
        else:
            self.result.failure = f"{type(err).__name__}: {err}"[:500]
            self.ending = Ending("FAILED", tags={"runner.error": self.result.failure})

    def close(self) -> None:
        """Every sink closed with the ending (the CSV first: whole before MLflow logs it);
        the MLflow run's ending is handed over, and settled by settle()."""
        for sink in self.sinks:
            if sink is self.mlflow:
                self.mlflow.finish(self.ending)  # the batch's endings go to the store at once
            else:
                sink.close(self.ending)
        if self.steps_csv is not None:
            self.steps_csv.close(self.ending)

    def settle(self) -> None:
        """Once the store has ended the MLflow run: the Result, in result.json."""
        if self.mlflow is not None and self.mlflow.run_id:
            self.mlflow.settle()
        if self.mlflow is not None and self.mlflow.error:
            self.result.tracking_error = self.mlflow.error
            # The store failed: the run is not whole, and its MLflow run says FAILED (the
            # last line agrees with the store, a stopped run's too).
            if self.result.status in ("FINISHED", "KILLED"):
                self.result.status = "FAILED"
                self.result.failure = f"MLflow failed: {self.mlflow.error}"
        write_result(self.ctx.run_dir, self.result)


def run_batch(confs: list[Config], ctxs: list[RunContext]) -> list[Result]:
    """Train jobs that share data, model kind, loss, optimizer kind and device as one batch
    (a single run is a batch of one); feed each its sinks; say how each ended. A grid
    sweep's job whose identical run FINISHED in the store is reused instead (runner/reuse.py)."""
    points = load_arrays(confs[0].data, confs[0].seed, ctxs[0].launch_dir)  # (shared)
    data, device = data_digest(*points), resolve_device(confs[0].device)
    digests = [run_digest(c, data, device) for c in confs]  # what decides each job's numbers
    if confs[0].mlflow.enabled and len(confs) >= TWO_LANES:
        tracker(1)  # the second lane's process starts now: it imports MLflow during the lookup
    twins = finished_twins(confs, ctxs, digests)
    results = {i: _reused(confs[i], ctxs[i], twin) for i, twin in twins.items()}
    fresh = [i for i in range(len(confs)) if i not in results]
    if fresh:
        trained = _train_batch([confs[i] for i in fresh], [ctxs[i] for i in fresh], points,
                               [digests[i] for i in fresh])  # fmt: skip
        results |= dict(zip(fresh, trained, strict=True))
    return [results[i] for i in range(len(confs))]


def _reused(conf: Config, ctx: RunContext, twin: dict) -> Result:
    """The Result of a job not run again: its identical run's, which FINISHED."""
    metrics, params, tags = twin["metrics"], twin["params"], twin["tags"]
    final = {k: v for k, v in metrics.items() if k.startswith("final_") and k != "final_loss"}
    result = Result("FINISHED", int(tags.get("runner.epochs_run", conf.epochs)),
                    metrics["final_loss"], final, lr=conf.lr, mlflow_run_id=twin["run_id"],
                    reused=True)  # fmt: skip
    if plain_gradient_descent(conf):
        result.stable_lr_max = float(params.get("stable_lr_max", math.nan))
    result.condition_number = float(params.get("condition_number", math.nan))
    result.optimum_loss = float(params.get("optimum.loss", math.nan))
    for field_name in ("converged_at_epoch", "stalled_at_epoch"):
        if field_name in tags:
            setattr(result, field_name, int(tags[field_name]))
    write_result(ctx.run_dir, result)
    history = Path(tags.get("hydra.output_dir", "")) / "metrics.csv"
    if history.is_file():  # (a store on this machine): the sweep's loss curves draw it too
        shutil.copyfile(history, ctx.run_dir / "metrics.csv")
    with _job_log(ctx.log_file):
        log.info(f"runner: reused MLflow run {twin['run_id']}: it FINISHED with the same settings,"
                 " data and runner version (sweep.rerun=true trains it again)")  # fmt: skip
    return result


def _train_batch(
    confs: list[Config], ctxs: list[RunContext], points: Points, digests: list[str]
) -> list[Result]:
    s = build(confs, ctxs[0].launch_dir, points)
    jobs = [JobRun(c, ctx, s, len(confs) == 1, digest)
            for c, ctx, digest in zip(confs, ctxs, digests, strict=True)]  # fmt: skip
    for job in jobs:
        if job.ctx.study is None:  # (a search's trial is pruned instead)
            _warn_if_unstable(job.conf, s.best)
    opened: list[JobRun] = []
    try:
        if STOPPER.stop.is_set():  # noted while the run was set up: nothing written yet
            raise NotStarted(STOPPER.signum)
        lanes = 2 if len(jobs) >= TWO_LANES else 1  # tracking processes for this batch
        data = _data_spec(confs[0], s, ctxs[0].launch_dir)
        for j, job in enumerate(jobs):
            job.request_store(s, j % lanes, data)
        for job in jobs:
            job.open_store()
            opened.append(job)  # from here on, it is closed whatever happens
            job.open_sinks(s)
        members = [job.member(o, sc) for job, o, sc in zip(jobs, s.optimizers, s.schedules,
                                                            strict=True)]  # fmt: skip
        where = "its runs end KILLED, MLflow holding every epoch of their CSVs"
        if len(jobs) == 1:
            where = f"the run ends KILLED, MLflow holding every epoch of {jobs[0].csv_path}"
        with STOPPER.listening_while(where):
            outcomes = train(s.model, s.loss_fn, members, s.x, s.y, _chunk(jobs), STOPPER.stop,
                             s.val, s.batches)  # fmt: skip
        finals = _final_metrics(s)
        for j, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True)):
            job.ending = _conclude(outcome, job, s, finals[j])
    except BaseException as err:
        for job in opened:
            job.fail(err)
        raise
    finally:
        for job in opened:
            job.close()
        for job in opened:
            job.settle()
    for job in jobs:
        with _job_log(job.ctx.log_file):
            _print_summary(job.conf, job.result, s.best, job.csv_path, job.mlflow)
    return [job.result for job in jobs]


def _chunk(jobs: list[JobRun]) -> int:
    """Epochs per chunk: the config's, or fewer, so that a chunk ends at each epoch where a
    search's trials report (every trial of a study reports at the same epochs)."""
    chunk = jobs[0].conf.chunk
    for job in jobs:
        if job.ctx.study is not None:
            chunk = reporting(job.ctx.study, job.conf.epochs, chunk)[1]
    return chunk


def _diverges(conf: Config, best: Optimum) -> bool:
    """Plain full-batch gradient descent at a constant lr >= 2/λmax: the maths says it
    diverges (weight decay only lowers the limit; a schedule may bring lr below it)."""
    steady = conf.batch_size is None and conf.schedule.name == "constant"
    return plain_gradient_descent(conf) and steady and conf.lr >= best.stable_lr_max


def _conclude(outcome: Outcome, job: JobRun, s: Setup, final: dict[str, float]) -> Ending:
    """The Result and the MLflow ending of a job that trained to one of its ends."""
    result, conf = job.result, job.conf
    if outcome.how == How.interrupted:
        result.status, result.signal = "KILLED", STOPPER.signum
        return Ending("KILLED")
    if outcome.how == How.abandoned:  # its CSV could not be written (a full disk)
        result.failure = outcome.detail
        return Ending("FAILED", tags={"runner.error": outcome.detail})
    written = job.ctx.run_dir / ".hydra" / "config.yaml"  # Hydra's copy of the job's config
    config_yaml = written.read_text() if written.is_file() else OmegaConf.to_yaml(plain(conf))
    finished = outcome.how in (How.finished, How.converged, How.stalled)
    plots = conf.plots if conf.plots is not None else not job.ctx.in_sweep
    pictures = _plots(job.csv_path, s, final if finished else None) if plots else []
    files = [str(job.csv_path), *map(str, pictures)]
    if job.steps_csv is not None:
        files.insert(1, str(job.steps_csv.path))
    texts = {"config.yaml": config_yaml}
    if outcome.how == How.pruned:  # KILLED: it did not run its course, by decision
        by = outcome.detail or "pruner"
        result.status, result.pruned_at_epoch, result.pruned_by = "PRUNED", outcome.at_epoch, by
        tags = {"pruned": "true", "pruned_by": by}
        if outcome.at_epoch is not None:  # (None: pruned before its first epoch)
            tags["pruned_at_epoch"] = str(outcome.at_epoch)
        return Ending("KILLED", tags=tags, files=files, texts=texts)
    if outcome.how == How.diverged:
        result.status, result.diverged_at_epoch = "DIVERGED", outcome.at_epoch
        tags = {"diverged": "true", "diverged_at_epoch": str(outcome.at_epoch)}
        return Ending("FAILED", tags=tags, files=files, texts=texts)
    if outcome.how == How.grad_check_failed:
        result.failure = outcome.detail
        tags = {"grad_check_failed": "true", "grad_check_failed_at_epoch": str(outcome.at_epoch)}
        return Ending("FAILED", tags=tags, files=files, texts=texts)
    tags = {}
    if outcome.how == How.converged:
        result.converged_at_epoch = outcome.at_epoch
        tags = {"early_stopped": "true", "converged_at_epoch": str(outcome.at_epoch)}
    if outcome.how == How.stalled:
        result.stalled_at_epoch = outcome.at_epoch
        tags = {"early_stopped": "true", "stalled_at_epoch": str(outcome.at_epoch)}
    result.status, result.final_loss = "FINISHED", final["final_loss"]
    result.final = {k: v for k, v in final.items() if k != "final_loss"}
    tags["runner.epochs_run"] = str(result.epochs_run)  # (what a reuse of it reports)
    log_model = conf.mlflow.log_model
    if log_model is None:  # like plots: a single run's, not each job's of a sweep
        log_model = not job.ctx.in_sweep
    model = _model_spec(s, final) if log_model else None
    return Ending("FINISHED", metrics=final, tags=tags, files=files, texts=texts, model=model)


def _mlflow_sink(
    conf: Config, s: Setup, ctx: RunContext, lane: int, data: DataSpec | None, digest: str
) -> MlflowSink | None:
    """The run's MLflow sink, not yet opened; None when MLflow is off or skipped."""
    if not conf.mlflow.enabled:
        return None
    uri = conf.mlflow.tracking_uri or default_tracking_uri(ctx.launch_dir)
    if not conf.mlflow.required and (problem := server_problem(uri)):
        log.warning(f"runner: mlflow skipped: {uri} does not answer ({problem}); CSV only")
        return None
    tags = {
        "hydra.output_dir": str(ctx.run_dir),
        "hydra.overrides": redact_text(" ".join(ctx.overrides)),
    }
    tags["runner.main_pid"] = str(os.getpid())  # the trainer (runner.pid: the run's writer)
    tags["runner.digest"] = digest  # a grid sweep run again reuses it (runner/reuse.py)
    tags |= record(s.x.device, ctx.command)  # code, versions, machine, command line
    if ctx.sweep_parent:
        tags["mlflow.parentRunId"] = ctx.sweep_parent  # the dashboard nests it under its sweep
    params = {k: str(v) for k, v in flat(conf).items()}
    params |= {f"optimum.{k}": str(v) for k, v in s.best.params.items()}
    params |= {
        "optimum.loss": str(s.best.loss),
        "stable_lr_max": str(s.best.stable_lr_max),
        "condition_number": str(s.best.condition),
    }
    spec = RunSpec(uri, conf.mlflow.experiment, run_name(list(ctx.overrides)), params, tags)
    return MlflowSink(spec, lane, conf.mlflow.log_every, data)


def _data_spec(conf: Config, s: Setup, launch_dir: Path) -> DataSpec | None:
    """The training data as MLflow's run input: named and sourced from the config."""
    x, y = s.points
    if not conf.mlflow.enabled or len(y) * (len(x) + 1) > DATASET_CELLS_MAX:
        return None
    data = conf.data
    if data.kind == DataKind.csv:
        path = (launch_dir / str(data.path)).resolve()  # (a relative path: from the launch dir)
        name, source = path.name, str(path)
    elif data.kind == DataKind.synthetic:
        seed = data.seed if data.seed is not None else conf.seed
        name = "synthetic"
        weights = data.true_w if data.true_w is not None else [data.true_a] * len(x)
        line = f"{weights[0]} * x" if len(x) == 1 else f"{weights} . x"
        spread = f", correlation={data.correlation}" if data.correlation else ""
        source = (f"synthetic: n={data.n}, y = {line} + {data.true_b} + {data.noise} * N(0, 1)"
                  f"{spread}, seed={seed}")  # fmt: skip
    else:
        name, source = "inline", "data.x and data.y of the config"
    key = hashlib.sha1(x.tobytes() + y.tobytes() + source.encode()).hexdigest()
    columns = dict(zip(feature_names(len(x)), x, strict=True)) | {"y": y}
    return DataSpec(key, name, source, data.kind == DataKind.csv, columns)


def _model_spec(s: Setup, final: dict[str, float]) -> ModelSpec:
    """A finished member's parameters as the MLflow model y = w . x + b, one input column
    per feature (x, or x1..xk, as in the data)."""
    x = s.points[0]
    columns = feature_names(len(x))
    weights = {c: final[f"final_{n}"] for c, n in zip(columns, s.model.weights, strict=True)}
    example = {c: [float(v) for v in row[:5]] for c, row in zip(columns, x, strict=True)}
    return ModelSpec(weights, final.get("final_b", 0.0), example)


def _final_metrics(s: Setup) -> list[dict[str, float]]:
    """Each member's loss at the parameters its last step produced, and those parameters."""
    with torch.no_grad():
        y_hat = s.model(s.x)
        losses = s.loss_fn(y_hat, s.y.expand_as(y_hat)).view(-1).tolist()  # one host sync
        names = s.model.names()
        values = torch.cat([s.model.stacked(n) for n in names], dim=-1).tolist()
    finals = []
    for loss, params in zip(losses, values, strict=True):
        final = {"final_loss": loss} | {f"final_{n}": v for n, v in zip(names, params, strict=True)}
        final["final_gap"] = loss - s.best.loss
        squares = sum((final[f"final_{n}"] - v) ** 2 for n, v in s.best.params.items())
        finals.append(final | {"final_distance": math.sqrt(squares)})
    return finals


def _plots(csv_path: Path, s: Setup, final: dict[str, float] | None) -> list[Path]:
    """The run's PNGs; a plotting problem is reported, and never costs the run."""
    from runner.plots import run_plots  # matplotlib only when there is something to draw

    history = pd.read_csv(csv_path)
    if history.empty:
        return []
    if final is None:  # the run failed: draw its last recorded parameters
        final = {f"final_{n}": history[n].iloc[-1] for n in s.best.params}
    params = {n: final[f"final_{n}"] for n in s.best.params}
    try:
        return run_plots(history, *s.points, s.best, params, csv_path.parent)
    except Exception as err:  # a picture is not worth a failed run
        log.warning(f"runner: warning: plots skipped ({type(err).__name__}: {err})")
        return []


def plain_gradient_descent(conf: Config) -> bool:
    """Whether lr < 2/λmax decides stability, as the optimizer registry declares it (steps
    along the gradient alone); with mini-batches it is the full-batch limit."""
    return stability_limit_applies(conf.optimizer)


def _warn_if_unstable(conf: Config, best: Optimum) -> None:
    if plain_gradient_descent(conf) and conf.lr >= best.stable_lr_max:
        if conf.batch_size is None:
            expect = "expect it to diverge"
        else:  # a mini-batch's Hessian is not the whole data's: say only what is known
            expect = "that is the full-batch limit; with mini-batches the limit is not known here"
        log.warning(
            f"runner: warning: lr={conf.lr:g} is at or above {best.stable_lr_max:.4g}, the largest "
            "stable step for plain gradient descent on this data (2 / largest eigenvalue of the "
            f"loss's Hessian): {expect}"
        )


@contextlib.contextmanager
def _job_log(path: Path | None) -> Iterator[None]:
    """While it lasts, the runner's lines also go to the job's own log file."""
    if path is None:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def write_result(run_dir: Path, result: Result) -> None:
    """result.json, valid JSON: a number that is not finite is written as null."""
    plain = {k: _json_number(v) for k, v in asdict(result).items()}
    plain["final"] = {k: _json_number(v) for k, v in result.final.items()}
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(plain, indent=2, allow_nan=False) + "\n")
    tmp.replace(run_dir / "result.json")  # whole or absent, never half-written


def _json_number(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _print_summary(
    conf: Config, result: Result, best: Optimum, csv_path: Path, mlflow: MlflowSink | None
) -> None:
    epochs = f"{result.epochs_run} epoch{'s' * (result.epochs_run != 1)}"
    if result.status == "DIVERGED":
        log.info(
            f"runner: diverged at epoch {result.diverged_at_epoch} (non-finite loss, parameter "
            f"or gradient; lr={conf.lr} is too large?); the CSV keeps the {epochs} before it"
        )
    elif result.status == "PRUNED" and result.pruned_by == "stability":
        log.info(
            f"runner: pruned before training: lr={conf.lr:g} is at or above "
            f"{best.stable_lr_max:.4g}, the largest stable step for plain gradient descent on "
            "this data (2/λmax)"
        )
    elif result.status == "PRUNED":
        log.info(f"runner: pruned by the search's pruner after epoch {result.pruned_at_epoch}; "
                 f"the CSV keeps its {epochs}")  # fmt: skip
    elif result.status == "KILLED":
        name = signal.Signals(result.signal or signal.SIGINT).name
        where = (
            f"MLflow run {mlflow.run_id} ended KILLED"
            if mlflow and mlflow.run_id
            else "no MLflow run"
        )
        kept = f"epochs 0-{result.epochs_run - 1}" if result.epochs_run else "no epoch"
        store = "the CSV and MLflow keep" if mlflow and not mlflow.error else "the CSV keeps"
        log.warning(f"runner: stopped by {name}: {where}; {store} {kept}")
        return  # the last line: what was kept
    elif result.final:
        params = ", ".join(f"{n}={result.final[f'final_{n}']:.6g}" for n in best.params)
        log.info(f"runner: {epochs}, final loss {result.final_loss:.6g} ({params})")
        exact = ", ".join(f"{k}*={v:.6g}" for k, v in best.params.items())
        log.info(
            f"runner: optimum loss {best.loss:.6g} at {exact}: gap {result.final['final_gap']:.3g},"
            f" distance {result.final['final_distance']:.3g}"
        )
        log.info(
            f"runner: loss's Hessian: stable for plain gradient descent below lr "
            f"{best.stable_lr_max:.4g} (2/λmax), condition number {best.condition:.4g} (λmax/λmin)"
        )
        if result.stalled_at_epoch is not None:
            log.info(
                f"runner: stopped early at epoch {result.stalled_at_epoch}: val_loss did not "
                f"improve for stop.patience={conf.stop.patience} epochs"
            )
        if result.converged_at_epoch is not None:
            log.info(
                f"runner: stopped early: the loss changed by less than stop.tol={conf.stop.tol}"
            )
    else:
        log.error(f"runner: error: {result.failure}; the run is FAILED, the CSV keeps {epochs}")
    log.info(f"runner: csv    {csv_path}")
    if mlflow is not None and mlflow.run_id:
        log.info(
            f"runner: mlflow run {mlflow.run_id} in '{conf.mlflow.experiment}' at {mlflow.uri}"
        )
    elif conf.mlflow.enabled:
        log.info("runner: mlflow skipped (the store did not answer); the CSV holds the run")
    else:
        log.info("runner: mlflow off (mlflow.enabled=false)")
