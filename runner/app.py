"""One run: config -> data tensors -> model -> loss -> optimizer -> epoch loop -> sinks.

runner/cli.py calls `run` once per Hydra job with the checked config, so what can still
go wrong here is the machine or the store.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from runner.cleanup import process_tags
from runner.config import Config, ConfigError
from runner.console_sink import ConsoleSink
from runner.csv_sink import CsvSink
from runner.data import load_arrays, to_tensors
from runner.loop import Converged, Diverged, train
from runner.losses import Loss, build_loss
from runner.model import Linear, build_model
from runner.optimizers import Optimizer, build_optimizer
from runner.signals import interrupts_deferred, restore_sigterm, sigterm_raises
from runner.store import default_tracking_uri, redact, run_name, server_problem


@dataclass
class Setup:
    model: Linear
    loss_fn: Loss
    optimizer: Optimizer
    x: torch.Tensor
    y: torch.Tensor


def build(conf: Config, launch_dir: Path) -> Setup:
    """Data tensors, model, loss and optimizer on the configured device."""
    device = resolve_device(conf.device)
    torch.manual_seed(conf.seed)  # before the model: a random init draws from it
    x, y = to_tensors(*load_arrays(conf.data, conf.seed, launch_dir), device)
    model = build_model(conf.model, device)
    loss_fn = build_loss(conf.loss.name)
    optimizer = build_optimizer(conf.optimizer.name, model.parameters(), conf.lr)
    return Setup(model, loss_fn, optimizer, x, y)


@dataclass
class Result:
    """How a run ended; written to result.json in the run directory for sweep summaries."""

    status: str  # FINISHED, DIVERGED, FAILED or KILLED
    epochs_run: int
    final_loss: float  # inf unless FINISHED, so a sweeper ranks it last
    final: dict[str, float] = field(default_factory=dict)  # final_a, final_b
    mlflow_run_id: str | None = None
    diverged_at_epoch: int | None = None
    converged_at_epoch: int | None = None  # stop.tol ended the run early
    tracking_error: str | None = None  # MLflow failed mid-run; the CSV went on alone


def run(
    conf: Config,
    launch_dir: Path,
    run_dir: Path,
    overrides: list[str],
    parent_run_id: str | None = None,
) -> Result:
    """Train once, feed the sinks, and say how it ended."""
    s = build(conf, launch_dir)
    previous_sigterm = sigterm_raises()
    tracker = None
    progress = Result("FAILED", epochs_run=0, final_loss=math.inf)
    try:
        # The store first: if it cannot be reached, the run stops before any file is written.
        tracker = _open_tracker(conf, launch_dir, run_dir, overrides, parent_run_id)
        progress.mlflow_run_id = tracker.run_id if tracker else None
        result = _train_into_sinks(conf, s, run_dir, tracker, progress)
    except BaseException as err:
        progress.status = "KILLED" if isinstance(err, KeyboardInterrupt | SystemExit) else "FAILED"
        if tracker is not None:
            _tracked(progress, tracker.abort, progress.status)
        _write_result(run_dir, progress)
        raise
    finally:
        restore_sigterm(previous_sigterm)
    _write_result(run_dir, result)
    _print_summary(conf, result, run_dir / "metrics.csv", tracker)
    return result


def _train_into_sinks(
    conf: Config, s: Setup, run_dir: Path, tracker: Any, progress: Result
) -> Result:
    """The loop feeding the sinks; `progress` counts the epochs written so far."""
    with CsvSink(run_dir / "metrics.csv") as csv:
        console = _console(conf.print_every)
        loop = train(
            s.model, s.loss_fn, s.optimizer, s.x, s.y,
            conf.epochs, conf.zero_grad, conf.chunk, conf.stop.tol,
        )  # fmt: skip
        ended_early = None
        try:
            for chunk in loop:
                with interrupts_deferred():  # a chunk reaches every sink, or none
                    csv.write(chunk)  # first: the CSV is the record that must never miss a row
                    progress.epochs_run += len(chunk)
                    if tracker is not None and not _tracked(progress, tracker.write, chunk):
                        tracker = None  # the store is gone: train on, with the CSV alone
                    for sink in console:
                        sink.write(chunk)
        except (Diverged, Converged) as err:
            ended_early = err
    config_yaml = OmegaConf.to_yaml(conf)
    if isinstance(ended_early, Diverged):
        if tracker is not None:
            _tracked(progress, tracker.diverged, ended_early.epoch, config_yaml, [csv.path])
        return replace(progress, status="DIVERGED", diverged_at_epoch=ended_early.epoch)
    final = _final_metrics(s)
    converged_at = ended_early.epoch if ended_early else None
    if tracker is not None:
        tags = {}
        if converged_at is not None:
            tags = {"early_stopped": "true", "converged_at_epoch": str(converged_at)}
        _tracked(progress, tracker.finish, final, config_yaml, [csv.path], tags)
    loss = final.pop("final_loss")
    return replace(
        progress, status="FINISHED", final_loss=loss, final=final, converged_at_epoch=converged_at
    )


def _tracked(progress: Result, action: Any, *args: Any) -> bool:
    """Call the MLflow sink; on failure say so in one line and note it instead of raising."""
    try:
        action(*args)
        return True
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        progress.tracking_error = f"{type(err).__name__}: {reason}"
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


def _console(every: int) -> list[ConsoleSink]:
    return [ConsoleSink(every)] if every > 0 else []


def _final_metrics(s: Setup) -> dict[str, float]:
    """The loss at the parameters the last step produced, and those parameters."""
    with torch.no_grad():
        final = {"final_loss": s.loss_fn(s.model(s.x), s.y).item()}
    return final | {f"final_{name}": p.item() for name, p in s.model.named_parameters()}


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA when torch sees a GPU; `cuda` without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "cpu or auto (torch sees no CUDA device here)")
    return torch.device(name)


def _open_tracker(
    conf: Config,
    launch_dir: Path,
    run_dir: Path,
    overrides: list[str],
    parent_run_id: str | None,
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
    tags |= process_tags()  # lets `python -m runner.cleanup` end the run if we are killed
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # the dashboard nests the run under its sweep
    return MlflowSink(
        uri,
        conf.mlflow.experiment,
        run_name=run_name(overrides),
        params={k: redact(str(v)) for k, v in _flatten(asdict(conf)).items()},
        tags=tags,
    )


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat |= _flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}")
    return flat


def _git_commit() -> str | None:
    """The commit of the runner's own source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _print_summary(conf: Config, result: Result, csv_path: Path, tracker: Any) -> None:
    epochs = f"{result.epochs_run} epoch{'s' * (result.epochs_run != 1)}"
    if result.status == "DIVERGED":
        print(
            f"runner: diverged at epoch {result.diverged_at_epoch} (non-finite loss, parameter "
            f"or gradient; lr={conf.lr} is too large?); the CSV keeps the {epochs} before it"
        )
    else:
        params = ", ".join(f"{k.removeprefix('final_')}={v:.6g}" for k, v in result.final.items())
        print(f"runner: {epochs}, final loss {result.final_loss:.6g} ({params})")
        if result.converged_at_epoch is not None:
            print(f"runner: stopped early: the loss changed by less than stop.tol={conf.stop.tol}")
    print(f"runner: csv    {csv_path}")
    if tracker is not None:
        where = f"'{conf.mlflow.experiment}' at {redact(tracker.tracking_uri)}"
        print(f"runner: mlflow run {tracker.run_id} in {where}")
    else:
        print("runner: mlflow off (mlflow.enabled=false)")
    sys.stdout.flush()
