"""One run: config -> data tensors -> model -> loss -> optimizer -> epoch loop -> sinks.

runner/cli.py calls `run` once per Hydra job with the checked config, so what can still
go wrong here is the machine or the store.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from runner.analysis import Optimum, add_distances, optimum
from runner.checks import first_line
from runner.config import Config, ConfigError
from runner.console_sink import ConsoleSink, ProgressSink
from runner.csv_sink import CsvSink
from runner.data import load_arrays, to_tensors
from runner.loop import Converged, Diverged, GradCheckFailed, train
from runner.losses import Loss, build_loss
from runner.model import Linear, build_model
from runner.optimizers import Optimizer, build_optimizer
from runner.provenance import record
from runner.signals import interrupts_deferred, restore_sigterm, sigterm_raises
from runner.store import default_tracking_uri, redact, run_name, server_problem


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


def epoch_loop(conf: Config, s: Setup) -> Iterator[pd.DataFrame]:
    """The epoch loop as the config asks for it, handing out the history in chunks."""
    check_grad = conf.check_grad_tol if conf.check_grad else None
    return train(
        s.model, s.loss_fn, s.optimizer, s.x, s.y,
        conf.epochs, conf.zero_grad, conf.chunk, conf.stop.tol, check_grad,
    )  # fmt: skip


@dataclass
class Result:
    """How a run ended; written to result.json in the run directory for sweep summaries."""

    status: str  # FINISHED, DIVERGED, FAILED or KILLED
    epochs_run: int
    final_loss: float  # inf unless FINISHED, so a sweeper ranks it last
    final: dict[str, float] = field(default_factory=dict)  # final_a, final_b
    lr: float = math.nan
    stable_lr_max: float = math.nan  # 2 / largest eigenvalue of the loss's Hessian
    optimum_loss: float = math.nan
    mlflow_run_id: str | None = None
    diverged_at_epoch: int | None = None
    converged_at_epoch: int | None = None  # stop.tol ended the run early
    failure: str | None = None  # why a FAILED run failed, e.g. the gradient check
    tracking_error: str | None = None  # MLflow failed mid-run; the CSV went on alone


def run(
    conf: Config,
    launch_dir: Path,
    run_dir: Path,
    overrides: list[str],
    parent_run_id: str | None = None,
    plots: bool = True,
    progress_bar: bool = False,
    await_tracking: bool = True,
) -> Result:
    """Train once, feed the sinks, and say how it ended.

    With await_tracking=False the MLflow run is ended without waiting for the store: for
    a sweep's jobs in the process that launches them, whose sweep waits for it at the end.
    """
    s = build(conf, launch_dir)
    _warn_if_unstable(conf, s.best)
    previous_sigterm = sigterm_raises()
    tracker = None
    progress = Result(
        "FAILED", 0, math.inf, lr=conf.lr,
        stable_lr_max=s.best.stable_lr_max, optimum_loss=s.best.loss,
    )  # fmt: skip
    try:
        # The store first: if it cannot be reached, the run stops before any file is written.
        tracker = _open_tracker(
            conf, s, launch_dir, run_dir, overrides, parent_run_id, await_tracking
        )
        progress.mlflow_run_id = tracker.run_id if tracker else None
        result = _train_into_sinks(conf, s, run_dir, tracker, progress, plots, progress_bar)
    except BaseException as err:
        progress.status = "KILLED" if isinstance(err, KeyboardInterrupt | SystemExit) else "FAILED"
        if tracker is not None:
            _tracked(progress, tracker.abort, progress.status)
        _write_result(run_dir, progress)
        raise
    finally:
        restore_sigterm(previous_sigterm)
    _write_result(run_dir, result)
    _print_summary(conf, result, s.best, run_dir / "metrics.csv", tracker)
    return result


def _train_into_sinks(
    conf: Config,
    s: Setup,
    run_dir: Path,
    tracker: Any,
    progress: Result,
    plots: bool,
    progress_bar: bool,
) -> Result:
    """The loop feeding the sinks; `progress` counts the epochs written so far."""
    loop = epoch_loop(conf, s)
    console: list[Any] = [ConsoleSink(conf.print_every)] if conf.print_every > 0 else []
    if progress_bar:
        console.append(ProgressSink(conf.epochs))
    ended_early = None
    with CsvSink(run_dir / "metrics.csv") as csv:
        try:
            for chunk in loop:
                chunk = add_distances(chunk, s.best)
                with interrupts_deferred():  # a chunk reaches every sink, or none
                    csv.write(chunk)  # first: the CSV is the record that must never miss a row
                    progress.epochs_run += len(chunk)
                    if tracker is not None and not _tracked(progress, tracker.write, chunk):
                        tracker = None  # the store is gone: train on, with the CSV alone
                    for sink in console:
                        sink.write(chunk)
        except (Diverged, Converged, GradCheckFailed) as err:
            ended_early = err
        finally:
            for sink in console:
                getattr(sink, "close", lambda: None)()
    config_yaml = redact(OmegaConf.to_yaml(conf))
    if isinstance(ended_early, Diverged | GradCheckFailed):
        files = [csv.path, *(_plots(csv.path, s, None, run_dir) if plots else [])]
        tags = _failure_tags(ended_early)
        if tracker is not None:
            _tracked(progress, tracker.failed, tags, config_yaml, files)
        if isinstance(ended_early, Diverged):
            return replace(progress, status="DIVERGED", diverged_at_epoch=ended_early.epoch)
        return replace(progress, status="FAILED", failure=str(ended_early))
    final = _final_metrics(s)
    files = [csv.path, *(_plots(csv.path, s, final, run_dir) if plots else [])]
    converged_at = ended_early.epoch if ended_early else None
    if tracker is not None:
        tags = {}
        if converged_at is not None:
            tags = {"early_stopped": "true", "converged_at_epoch": str(converged_at)}
        _tracked(progress, tracker.finish, final, config_yaml, files, tags)
    loss = final.pop("final_loss")
    return replace(
        progress, status="FINISHED", final_loss=loss, final=final, converged_at_epoch=converged_at
    )


def _failure_tags(err: Diverged | GradCheckFailed) -> dict[str, str]:
    if isinstance(err, Diverged):
        return {"diverged": "true", "diverged_at_epoch": str(err.epoch)}
    return {"grad_check_failed": "true", "grad_check_failed_at_epoch": str(err.epoch)}


def _plots(csv_path: Path, s: Setup, final: dict[str, float] | None, run_dir: Path) -> list[Path]:
    """The run's PNGs; a plotting problem is reported, and never costs the run."""
    from runner.plots import run_plots  # matplotlib only when there is something to draw

    history = pd.read_csv(csv_path)
    if history.empty:
        return []
    if final is None:  # the run failed: draw its last recorded parameters
        final = {f"final_{n}": history[n].iloc[-1] for n in s.best.params}
    params = {n: final[f"final_{n}"] for n in s.best.params}
    try:
        return run_plots(history, *s.points, s.best, params, run_dir)
    except Exception as err:  # a picture is not worth a failed run
        print(f"runner: warning: plots skipped ({type(err).__name__}: {err})", file=sys.stderr)
        return []


def _warn_if_unstable(conf: Config, best: Optimum) -> None:
    plain = conf.optimizer.name != "adam" and not conf.optimizer.momentum
    if plain and conf.lr >= best.stable_lr_max:
        print(
            f"runner: warning: lr={conf.lr:g} is at or above {best.stable_lr_max:.4g}, the largest "
            "stable step for plain gradient descent on this data (2 / largest eigenvalue of the "
            "loss's Hessian): expect it to diverge",
            file=sys.stderr,
        )


def _tracked(progress: Result, action: Any, *args: Any) -> bool:
    """Call the MLflow sink; on failure say so in one line and note it instead of raising."""
    try:
        action(*args)
        return True
    except Exception as err:
        progress.tracking_error = f"{type(err).__name__}: {first_line(err)}"
        print(
            f"runner: error: MLflow failed at epoch {progress.epochs_run} "
            f"({progress.tracking_error[:300]}); the CSV keeps every epoch",
            file=sys.stderr,
        )
        return False


def _write_result(run_dir: Path, result: Result) -> None:
    text = json.dumps(asdict(result), indent=2)  # json writes inf as Infinity; pandas reads it
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(text + "\n")
    tmp.replace(run_dir / "result.json")  # whole or absent, never half-written


def _final_metrics(s: Setup) -> dict[str, float]:
    """The loss at the parameters the last step produced, and those parameters."""
    with torch.no_grad():
        final = {"final_loss": s.loss_fn(s.model(s.x), s.y).item()}
    final |= {f"final_{name}": p.item() for name, p in s.model.named_parameters()}
    final["final_gap"] = final["final_loss"] - s.best.loss
    squares = sum((final[f"final_{n}"] - v) ** 2 for n, v in s.best.params.items())
    return final | {"final_distance": math.sqrt(squares)}


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA when torch sees a GPU; `cuda` without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "cpu or auto (torch sees no CUDA device here)")
    return torch.device(name)


def _open_tracker(
    conf: Config,
    s: Setup,
    launch_dir: Path,
    run_dir: Path,
    overrides: list[str],
    parent_run_id: str | None,
    await_finish: bool,
) -> Any:
    if not conf.mlflow.enabled:
        return None
    uri = conf.mlflow.tracking_uri or default_tracking_uri(launch_dir)
    if not conf.mlflow.required and (problem := server_problem(uri)):
        print(f"runner: mlflow skipped: {redact(uri)} does not answer ({problem}); CSV only")
        return None
    # Imported here: MLflow costs a second or more, and a run with it off should not pay.
    from runner.mlflow_sink import MlflowSink

    overrides = [redact(o) for o in overrides]
    tags = {"hydra.output_dir": str(run_dir), "hydra.overrides": " ".join(overrides)}
    tags["runner.main_pid"] = str(os.getpid())  # the trainer (runner.pid: the run's writer)
    tags |= record(s.x.device)  # code, versions, machine, command line
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # the dashboard nests the run under its sweep
    params = {k: redact(str(v)) for k, v in _flatten(asdict(conf)).items()}
    params |= {f"optimum.{k}": v for k, v in s.best.params.items()}
    params |= {"optimum.loss": s.best.loss, "stable_lr_max": s.best.stable_lr_max}
    return MlflowSink(uri, conf.mlflow.experiment, run_name(overrides), params, tags, await_finish)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat |= _flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}")
    return flat


def _print_summary(
    conf: Config, result: Result, best: Optimum, csv_path: Path, tracker: Any
) -> None:
    epochs = f"{result.epochs_run} epoch{'s' * (result.epochs_run != 1)}"
    if result.status == "DIVERGED":
        print(
            f"runner: diverged at epoch {result.diverged_at_epoch} (non-finite loss, parameter "
            f"or gradient; lr={conf.lr} is too large?); the CSV keeps the {epochs} before it"
        )
    elif result.status == "FAILED":
        print(f"runner: failed: {result.failure}; the CSV keeps the {epochs} before it")
    else:
        params = ", ".join(f"{n}={result.final[f'final_{n}']:.6g}" for n in best.params)
        print(f"runner: {epochs}, final loss {result.final_loss:.6g} ({params})")
        exact = ", ".join(f"{k}*={v:.6g}" for k, v in best.params.items())
        print(
            f"runner: optimum loss {best.loss:.6g} at {exact}: gap {result.final['final_gap']:.3g},"
            f" distance {result.final['final_distance']:.3g}"
        )
        if result.converged_at_epoch is not None:
            print(f"runner: stopped early: the loss changed by less than stop.tol={conf.stop.tol}")
    print(f"runner: csv    {csv_path}")
    if tracker is not None:
        where = f"'{conf.mlflow.experiment}' at {redact(tracker.tracking_uri)}"
        print(f"runner: mlflow run {tracker.run_id} in {where}")
    else:
        print("runner: mlflow off (mlflow.enabled=false)")
    sys.stdout.flush()
