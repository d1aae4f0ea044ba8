"""One run, start to end: build -> open the sinks -> train -> close the sinks with the outcome.

config -> data tensors -> model -> loss -> optimizer -> epoch loop -> sinks. The settings
were checked by the gate (runner/gate.py) before anything was written; what can still go
wrong here is the data file, the machine or the store. Whatever happens, every sink is
closed with how the run ended, so no MLflow run stays RUNNING.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from runner.analysis import Optimum, add_distances, optimum
from runner.config import Config, ConfigError
from runner.data import load_arrays, to_tensors
from runner.loop import How, Outcome, history_columns, train
from runner.losses import Loss, build_loss
from runner.mlflow_sink import MlflowSink, StoreUnavailable
from runner.model import Linear, build_model
from runner.optimizers import Optimizer, build_optimizer
from runner.provenance import record
from runner.signals import STOPPER
from runner.sinks import ConsoleSink, CsvSink, ProgressSink, Sink, SinkError
from runner.store import default_tracking_uri, run_name, server_problem
from runner.tracking import Ending, RunSpec

log = logging.getLogger("runner")


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


@dataclass
class Setup:
    model: Linear
    loss_fn: Loss
    optimizer: Optimizer
    x: torch.Tensor
    y: torch.Tensor
    points: tuple[np.ndarray, np.ndarray]  # the same data on the host, for the analysis
    best: Optimum  # the exact least-squares solution of this data


def build(conf: Config, launch_dir: Path | None) -> Setup:
    """Data tensors, model, loss and optimizer on the configured device."""
    device = resolve_device(conf.device)
    if conf.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(conf.seed)  # before the model: a random init draws from it
    points = load_arrays(conf.data, conf.seed, launch_dir or Path.cwd())
    x, y = to_tensors(*points, device)
    model = build_model(conf.model, device)
    loss_fn = build_loss(conf.loss.name)
    optimizer = build_optimizer(conf.optimizer, model.parameters(), conf.lr)
    return Setup(model, loss_fn, optimizer, x, y, points, optimum(*points, conf.model.bias))


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

    status: str  # FINISHED, DIVERGED, FAILED or KILLED
    epochs_run: int
    final_loss: float  # inf unless FINISHED, so a sweeper ranks it last
    final: dict[str, float] = field(default_factory=dict)  # final_a, final_b, ...
    lr: float = math.nan
    stable_lr_max: float = math.nan  # 2 / largest eigenvalue of the loss's Hessian
    optimum_loss: float = math.nan
    mlflow_run_id: str | None = None
    diverged_at_epoch: int | None = None
    converged_at_epoch: int | None = None  # stop.tol ended the run early
    failure: str | None = None  # why a FAILED run failed
    tracking_error: str | None = None  # MLflow failed; the CSV went on alone
    signal: int | None = None  # the stop signal of a KILLED run


def run(conf: Config, ctx: RunContext) -> Result:
    """Train once, feed the sinks, and say how it ended."""
    s = build(conf, ctx.launch_dir)
    _warn_if_unstable(conf, s.best)
    csv_path = ctx.run_dir / "metrics.csv"
    # The store first: a run whose store cannot be opened writes nothing at all.
    mlflow = _open_mlflow(conf, s, ctx)
    check = conf.check_grad_tol if conf.check_grad else None
    columns = [*history_columns(s.model, check is not None), "gap", "distance"]
    sinks: list[Sink] = [
        CsvSink(csv_path, columns),
        *([mlflow] if mlflow and mlflow.run_id else []),
    ]
    if ctx.owns_terminal and conf.print_every > 0:
        sinks.append(ConsoleSink(conf.print_every))
    if ctx.owns_terminal and conf.progress and os.isatty(2):
        sinks.append(ProgressSink(conf.epochs))
    result = Result("FAILED", 0, math.inf, lr=conf.lr, stable_lr_max=s.best.stable_lr_max,
                    optimum_loss=s.best.loss, mlflow_run_id=mlflow and mlflow.run_id)  # fmt: skip

    def write(chunk: pd.DataFrame) -> None:
        chunk = add_distances(chunk, s.best)
        for sink in sinks:  # the CSV first: the record that must never miss a row
            sink.write(chunk)
        result.epochs_run += len(chunk)

    ending = Ending("FAILED")
    try:
        for sink in sinks:
            if sink is not mlflow:  # (the MLflow run is open already)
                sink.open()
        where = f"the run ends KILLED, MLflow holding every epoch of {csv_path}"
        with STOPPER.listening_while(where):
            outcome = train(
                s.model, s.loss_fn, s.optimizer, s.x, s.y, conf.epochs, write,
                conf.zero_grad, conf.chunk, conf.stop.tol, check, STOPPER.stop,
            )  # fmt: skip
        ending = _conclude(outcome, conf, s, ctx, csv_path, result)
    except SinkError as err:  # the CSV cannot be written (a full disk): the run fails
        result.failure = str(err)
        ending = Ending("FAILED", tags={"runner.error": result.failure})
    except KeyboardInterrupt as err:  # Ctrl-C outside the loop, or a Stop between jobs
        result.status, result.signal = "KILLED", getattr(err, "signum", 2)
        ending = Ending("KILLED")
        raise
    except BaseException as err:
        result.failure = f"{type(err).__name__}: {err}"[:500]
        ending = Ending("FAILED", tags={"runner.error": result.failure})
        raise
    finally:
        for sink in sinks:  # the CSV first: complete before MLflow logs it as an artifact
            sink.close(ending)
        if mlflow is not None and mlflow.error:
            result.tracking_error = mlflow.error
            if result.status == "FINISHED":  # the store failed: the run is not whole
                result.status, result.failure = "FAILED", f"MLflow failed: {mlflow.error}"
        _write_result(ctx.run_dir, result)
    _print_summary(conf, result, s.best, csv_path, mlflow)
    return result


def _conclude(
    outcome: Outcome, conf: Config, s: Setup, ctx: RunContext, csv_path: Path, result: Result
) -> Ending:
    """The Result and the MLflow ending of a run that trained to one of its ends."""
    if outcome.how == How.interrupted:
        result.status, result.signal = "KILLED", STOPPER.signum
        return Ending("KILLED")
    config_yaml = OmegaConf.to_yaml(OmegaConf.structured(conf))
    finished = outcome.how in (How.finished, How.converged)
    final = _final_metrics(s) if finished else None
    plots = conf.plots if conf.plots is not None else not ctx.in_sweep
    files = [str(csv_path), *map(str, _plots(csv_path, s, final) if plots else [])]
    texts = {"config.yaml": config_yaml}
    if outcome.how == How.diverged:
        result.status, result.diverged_at_epoch = "DIVERGED", outcome.at_epoch
        tags = {"diverged": "true", "diverged_at_epoch": str(outcome.at_epoch)}
        return Ending("FAILED", tags=tags, files=files, texts=texts)
    if outcome.how == How.grad_check_failed:
        result.failure = outcome.detail
        tags = {"grad_check_failed": "true", "grad_check_failed_at_epoch": str(outcome.at_epoch)}
        return Ending("FAILED", tags=tags, files=files, texts=texts)
    assert final is not None
    tags = {}
    if outcome.how == How.converged:
        result.converged_at_epoch = outcome.at_epoch
        tags = {"early_stopped": "true", "converged_at_epoch": str(outcome.at_epoch)}
    result.status, result.final_loss = "FINISHED", final["final_loss"]
    result.final = {k: v for k, v in final.items() if k != "final_loss"}
    return Ending("FINISHED", metrics=final, tags=tags, files=files, texts=texts)


def _open_mlflow(conf: Config, s: Setup, ctx: RunContext) -> MlflowSink | None:
    """The run's MLflow sink, opened; None when MLflow is off or skipped."""
    if not conf.mlflow.enabled:
        return None
    uri = conf.mlflow.tracking_uri or default_tracking_uri(ctx.launch_dir)
    if not conf.mlflow.required and (problem := server_problem(uri)):
        log.warning(f"runner: mlflow skipped: {uri} does not answer ({problem}); CSV only")
        return None
    tags = {"hydra.output_dir": str(ctx.run_dir), "hydra.overrides": " ".join(ctx.overrides)}
    tags["runner.main_pid"] = str(os.getpid())  # the trainer (runner.pid: the run's writer)
    tags |= record(s.x.device, ctx.command)  # code, versions, machine, command line
    if ctx.sweep_parent:
        tags["mlflow.parentRunId"] = ctx.sweep_parent  # the dashboard nests it under its sweep
    plain = OmegaConf.to_container(OmegaConf.structured(conf), enum_to_str=True)
    params = {k: str(v) for k, v in pd.json_normalize(plain).iloc[0].items()}
    params |= {f"optimum.{k}": str(v) for k, v in s.best.params.items()}
    params |= {"optimum.loss": str(s.best.loss), "stable_lr_max": str(s.best.stable_lr_max)}
    spec = RunSpec(uri, conf.mlflow.experiment, run_name(list(ctx.overrides)), params, tags)
    sink = MlflowSink(spec)
    try:
        sink.open()
    except StoreUnavailable as err:
        if ctx.sweep_parent is None:
            raise  # a single run stops before it writes anything
        # A sweep goes on: this job trains with the CSV alone, and ends FAILED for it.
        log.error(f"runner: error: {err}; this job trains with the CSV alone")
        sink.error, sink.ended = str(err), True
    return sink


def _final_metrics(s: Setup) -> dict[str, float]:
    """The loss at the parameters the last step produced, and those parameters."""
    with torch.no_grad():
        final = {"final_loss": s.loss_fn(s.model(s.x), s.y).item()}  # one host sync, once
    final |= {f"final_{name}": p.item() for name, p in s.model.named_parameters()}
    final["final_gap"] = final["final_loss"] - s.best.loss
    squares = sum((final[f"final_{n}"] - v) ** 2 for n, v in s.best.params.items())
    return final | {"final_distance": math.sqrt(squares)}


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


def _warn_if_unstable(conf: Config, best: Optimum) -> None:
    plain = conf.optimizer.name != "adam" and not conf.optimizer.momentum
    if plain and conf.lr >= best.stable_lr_max:
        log.warning(
            f"runner: warning: lr={conf.lr:g} is at or above {best.stable_lr_max:.4g}, the largest "
            "stable step for plain gradient descent on this data (2 / largest eigenvalue of the "
            "loss's Hessian): expect it to diverge"
        )


def _write_result(run_dir: Path, result: Result) -> None:
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
