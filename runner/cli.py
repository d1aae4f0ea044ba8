"""`python -m runner`: Hydra composes the config, runner/checks.py checks it, runner/app.py runs it.

Torch and MLflow are imported only once the config has passed its checks, so a bad value
is answered in a fraction of a second with one line and exit code 2, before Hydra
creates any directory.
"""

from __future__ import annotations

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
    try:
        argv = sys.argv[1:]
        check_arguments(argv)
        if any(a in MULTIRUN_FLAGS for a in argv):
            check_command_line(argv)  # every swept value, before the first job starts
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
        )
    except ConfigError as err:  # found only on the machine itself, e.g. device=cuda
        report(err)
    except TrackingUnavailable as err:
        print(f"runner: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if (result.status == "DIVERGED" or result.tracking_error) and not multirun:
        raise SystemExit(1)
    # A sweep goes on past a diverged job: inf ranks it last, and Optuna records a bad trial.
    return result.final_loss


def _in_launching_process(job: DictConfig) -> bool:
    return job.mode != RunMode.MULTIRUN or "BasicLauncher" in str(job.launcher.get("_target_"))


def _http_defaults() -> None:
    """A dead tracking server should cost seconds of retries, not minutes (users may override)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
