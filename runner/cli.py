"""`python -m runner`: Hydra composes the config, runner/checks.py checks it, runner/app.py runs it.

Torch is imported only once the config has passed its checks, and MLflow never in this
process, so a bad value is answered in a fraction of a second with one line and exit
code 2, before Hydra creates any directory. The tracking process (runner/mlflow_sink.py)
is started as soon as the arguments parse, to import MLflow on another core meanwhile; it
is stopped unused when the config fails its checks.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from runner.checks import (
    MULTIRUN_FLAGS,
    check_arguments,
    check_command_line,
    explain,
    report,
    task_overrides,
)
from runner.config import CONF_DIR, ConfigError, load
from runner.mlflow_sink import tracking_process
from runner.signals import Terminated
from runner.store import TrackingUnavailable
from runner.sweep import parent_run_id


def main() -> None:
    _http_defaults()
    # conf/hydra/launcher/ray.yaml takes the place of the Ray plugin's preset on purpose.
    warnings.filterwarnings(
        "ignore", r"\s*'hydra/launcher/ray' is validated against ConfigStore schema"
    )
    # Hydra's composition errors reach us as exceptions, to be told in one line (below).
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if sys.argv[1:] in (["--help"], ["-h"]):
        print_help()  # ours, fast; Hydra's own is `--hydra-help`
        return
    try:
        argv = sys.argv[1:]
        check_arguments(argv)
        if any(a in MULTIRUN_FLAGS for a in argv):
            check_command_line(argv)  # every swept value, before the first job starts
        hydra_flags = any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in argv)
        if not hydra_flags and "mlflow.enabled=false" not in argv:
            # Started now, it imports MLflow on another core while Hydra composes and the
            # run imports torch; it writes nothing before the config has checked out.
            tracking_process()
        _hydra_main()
    except ConfigError as err:
        report(err)
    except (HydraException, OmegaConfBaseException) as err:
        if user_wants_traceback:
            raise
        overrides = [a for a in sys.argv[1:] if a not in MULTIRUN_FLAGS]
        report(explain(err, overrides))
    except KeyboardInterrupt:
        print("runner: interrupted (Ctrl-C); the runs so far are ended as KILLED", file=sys.stderr)
        raise SystemExit(130) from None
    except Terminated as err:
        print("runner: terminated (SIGTERM); the runs so far are ended as KILLED", file=sys.stderr)
        raise SystemExit(err.code) from None


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    _http_defaults()  # again: a Ray job runs in a Ray worker, which never ran main()
    if cfg.mlflow.enabled:
        tracking_process()  # (started already by main(), except in a launcher's worker)
    from runner.app import run  # torch is imported only now, after the config checked out

    job = HydraConfig.get()
    launch_dir = Path(job.runtime.cwd)
    multirun = job.mode == RunMode.MULTIRUN
    try:
        conf = load(cfg)
        result = run(
            conf,
            launch_dir=launch_dir,
            run_dir=Path(job.runtime.output_dir),
            overrides=task_overrides(HydraConfig.instance().cfg),
            parent_run_id=parent_run_id(launch_dir / job.sweep.dir) if multirun else None,
            plots=conf.plots if conf.plots is not None else not multirun,
            # A bar only where one process owns the terminal: not in parallel workers.
            progress_bar=conf.progress and sys.stderr.isatty() and _in_launching_process(job),
            # A job in the sweep's own process need not wait for its run to be ended: the
            # sweep's end waits for the tracking process, which works in order.
            await_tracking=not (multirun and _in_launching_process(job)),
        )
    except ConfigError as err:  # found only on the machine itself, e.g. device=cuda
        report(err)
    except TrackingUnavailable as err:
        print(f"runner: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if (result.status != "FINISHED" or result.tracking_error) and not multirun:
        raise SystemExit(1)  # diverged, failed its gradient check, or lost its tracking store
    # A sweep goes on past a failed job: inf ranks it last, and Optuna records a bad trial.
    return result.final_loss


def _in_launching_process(job: DictConfig) -> bool:
    return job.mode != RunMode.MULTIRUN or "BasicLauncher" in str(job.launcher.get("_target_"))


def _http_defaults() -> None:
    """A dead tracking server should cost seconds of retries, not minutes (users may override)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def print_help() -> None:
    """Usage, the config groups and every setting with its default, from the configs themselves."""
    from omegaconf import OmegaConf

    from runner.checks import compose_defaults

    groups = sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    lines = [
        "usage: python -m runner [-m] [key=value ...]",
        "",
        "Trains y = a*x + b (or y = a*x) by gradient descent with PyTorch autograd, logging",
        "every epoch to metrics.csv and MLflow. -m sweeps comma lists and range(...).",
        "",
        "config groups (group=option):",
        *(f"  {g.name:15s} {', '.join(sorted(f.stem for f in g.glob('*.yaml')))}" for g in groups),
        "  hydra/launcher  basic, joblib; ray, submitit_local, submitit_slurm (extra [launchers])",
        "",
        "settings (key=value) and their defaults:",
    ]
    defaults = compose_defaults()
    for key, value in sorted(defaults.items()):
        plain = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        shown = plain if isinstance(plain, str) else json.dumps(plain)
        lines.append(f"  {key}={shown}")
    lines += [
        "",
        "examples:",
        "  python -m runner optimizer=sgd lr=0.05",
        "  python -m runner experiment=seed_002",
        "  python -m runner -m lr=0.01,0.05,0.1 optimizer=manual,sgd",
        "  python -m runner -m hydra/launcher=joblib 'lr=range(0.01,0.21,0.01)'",
        "",
        "Hydra's own help and flags (--cfg job, --info, -cn): python -m runner --hydra-help",
    ]
    print("\n".join(lines))
