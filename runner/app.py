"""One run: config -> data tensors -> model -> loss -> optimizer -> epoch loop -> sinks.

runner/cli.py calls `run` once per Hydra job with the checked config, so what can still
go wrong here is the machine or the store.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from runner.config import Config, ConfigError
from runner.console_sink import ConsoleSink
from runner.csv_sink import CsvSink
from runner.data import load_arrays, to_tensors
from runner.loop import train
from runner.losses import Loss, build_loss
from runner.model import Linear, build_model
from runner.optimizers import Optimizer, build_optimizer


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


def run(conf: Config, launch_dir: Path, run_dir: Path, overrides: list[str]) -> float:
    """Train once, write the sinks, and return the final loss (what a sweeper minimizes)."""
    s = build(conf, launch_dir)
    previous_sigterm = _sigterm_raises()
    tracker = None
    try:
        # The store first: if it cannot be reached, the run stops before any file is written.
        tracker = _open_tracker(conf, launch_dir, run_dir, overrides)
        with CsvSink(run_dir / "metrics.csv") as csv:
            sinks = [csv, *([tracker] if tracker else []), *_console(conf.print_every)]
            for chunk in train(
                s.model, s.loss_fn, s.optimizer, s.x, s.y, conf.epochs, conf.zero_grad, conf.chunk
            ):
                for sink in sinks:
                    sink.write(chunk)
        final = _final_metrics(s)
        if tracker is not None:
            tracker.finish(final, config_yaml=OmegaConf.to_yaml(conf), files=[csv.path])
    except BaseException as err:
        if tracker is not None:
            interrupted = isinstance(err, KeyboardInterrupt | SystemExit)
            tracker.abort("KILLED" if interrupted else "FAILED")
        raise
    finally:
        _restore_sigterm(previous_sigterm)

    _print_summary(conf, final, csv.path, tracker)
    return final["final_loss"]


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


def _open_tracker(conf: Config, launch_dir: Path, run_dir: Path, overrides: list[str]) -> Any:
    if not conf.mlflow.enabled:
        return None
    # Imported here: MLflow costs a second or more, and a run with it off should not pay.
    from runner.mlflow_sink import MlflowSink, default_tracking_uri

    tags = {"hydra.output_dir": str(run_dir), "hydra.overrides": " ".join(overrides)}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return MlflowSink(
        conf.mlflow.tracking_uri or default_tracking_uri(launch_dir),
        conf.mlflow.experiment,
        run_name=",".join(overrides) or "defaults",
        params=_flatten(asdict(conf)),
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


class Terminated(SystemExit):
    """SIGTERM as an exception, so the run is closed like after Ctrl-C."""


def _sigterm_raises() -> Any:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a thread-based launcher): leave it alone
        return None


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(conf: Config, final: dict[str, float], csv_path: Path, tracker: Any) -> None:
    params = ", ".join(
        f"{k.removeprefix('final_')}={v:.6g}" for k, v in final.items() if k != "final_loss"
    )
    epochs = f"{conf.epochs} epoch{'s' * (conf.epochs != 1)}"
    print(f"runner: {epochs}, final loss {final['final_loss']:.6g} ({params})")
    print(f"runner: csv    {csv_path}")
    if tracker is not None:
        where = f"'{conf.mlflow.experiment}' at {tracker.tracking_uri}"
        print(f"runner: mlflow run {tracker.run_id} in {where}")
    else:
        print("runner: mlflow off (mlflow.enabled=false)")
    sys.stdout.flush()
