"""`python -m runner`: the gate checks the command line, then Hydra runs the job or the sweep.

    main()  ->  gate.check(argv)        settings, code paths, the run's own directory
            ->  tracking process        MLflow imports on the second core meanwhile
            ->  Hydra's main            one job, or `with Sweep(...)` a multirun
            ->  job(cfg)                run.run(conf, RunContext)  (runner/run.py)

Torch is imported only once the command line has passed the gate, and MLflow never in
this process: a bad value is answered in a fraction of a second with one line and exit
code 2, before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner import gate, hydra_settings
from runner.config import CONF_DIR, Config, ConfigError
from runner.logs import console, let_go_of
from runner.signals import NotStarted, Stop, install, stopped_before_start
from runner.store import redact_text

if TYPE_CHECKING:
    from runner.run import Result, RunContext
    from runner.search import Pruned


class Refused(BaseException):
    """A setting found bad only when the run starts (the data file, the device, the store).

    A BaseException, so that Hydra passes it on instead of logging a traceback of it."""

    def __init__(self, err: ConfigError) -> None:
        super().__init__(str(err))
        self.err = err


MAIN_PID = "RUNNER_MAIN_PID"  # the launching process: jobs there own the terminal
COMMAND = "RUNNER_COMMAND"  # the command line, for every job's record


def main() -> None:
    """Check, then run; every way out is one line and an exit code."""
    _http_defaults()
    warnings.filterwarnings(  # conf/hydra/launcher/ray.yaml stands in for the plugin's preset
        "ignore", r"\s*'hydra/launcher/ray' is validated against ConfigStore schema"
    )
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:  # (also after settings: `lr=0.1 --help`)
        print_help()  # ours, fast; Hydra's own is `--hydra-help`
        return
    stopper = install()
    # Until the run starts, a stop signal is noted, not raised: an exception in the middle of
    # Hydra's composition or of starting the tracking process could leave either half-done.
    with stopper.listening_while(""):
        try:
            plan = gate.check(argv)
        except ConfigError as err:
            _fail(err, 2)
        except NotStarted as err:  # a stop while a large sweep's values were checked
            raise stopped_before_start(err.signum) from None
        console()
        if plan.runs_jobs and plan.conf is not None and plan.conf.mlflow.enabled:
            from runner import tracking

            tracking.tracker()  # starts importing MLflow now, while Hydra composes and torch loads
        os.environ[MAIN_PID] = str(os.getpid())
        os.environ[COMMAND] = redact_text(shlex.join(["python", "-m", "runner", *argv]))
        # Hydra's errors reach us as exceptions (checked already: they are the machine's).
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if stopper.stop.is_set():
        _discard(plan)
        raise stopped_before_start(stopper.signum)
    try:
        if plan.multirun:
            _sweep(plan)
        else:  # a signal is noted until the run's loop listens (runner/run.py honors it)
            with stopper.listening_while(""):
                _hydra(plan, copied=[MAIN_PID, COMMAND])
    except Refused as refused:  # found only when the run starts: the data file, the device
        if not plan.multirun:
            _discard(plan)
        _fail(refused.err, 2)
    except OSError as err:  # Hydra writing its files into a full disk, before the run
        _not_written(plan, err)
    except KeyboardInterrupt as err:
        if isinstance(err, NotStarted) and not plan.multirun:  # set up, but nothing written
            _discard(plan)
            raise stopped_before_start(err.signum) from None
        if plan.multirun:  # (a single run has said what it kept)
            name = signal.Signals(stopper.signum or signal.SIGINT).name
            if _no_jobs(plan.out_dir):  # stopped before its first job: no directory of nothing
                _discard(plan)
                print(f"runner: sweep stopped by {name} before its first job", file=sys.stderr)
            else:
                print(f"runner: sweep stopped by {name}: its runs are ended KILLED; summary.csv "
                      "says what each kept", file=sys.stderr)  # fmt: skip
        raise SystemExit(getattr(err, "exit_code", 130)) from None


def _hydra(plan: gate.Plan, copied: list[str]) -> None:
    """Hydra's main on the gate's command line; `copied` reach every job's environment."""
    sys.argv = [sys.argv[0], *plan.hydra_argv]
    if plan.runs_jobs:
        sys.argv.append(f"hydra.job.env_copy=[{','.join(copied)}]")
    _hydra_main()


def _sweep(plan: gate.Plan) -> None:
    from runner.mlflow_sink import StoreUnavailable
    from runner.search import STUDY_VARIABLE
    from runner.sweep import PARENT_VARIABLE, Sweep

    assert plan.conf is not None and plan.out_dir is not None
    sweep = Sweep(plan.conf, plan.out_dir, plan.overrides, os.environ[COMMAND], plan.study)
    # A search's study, as the gate found it: the sweeper opens it, the trials report to it.
    os.environ[STUDY_VARIABLE] = plan.study.to_env() if plan.study is not None else ""
    sweep.request()  # the tracking process opens the parent run (importing MLflow first) ...
    if plan.jobs_here:
        import runner.run  # noqa: F401 - ... while this process imports torch for the jobs
    try:
        with sweep:
            parent = [PARENT_VARIABLE] if sweep.parent is not None else []
            _hydra(plan, copied=[MAIN_PID, COMMAND, STUDY_VARIABLE, *parent])
    except StoreUnavailable as err:
        if sweep.parent is not None and sweep.parent.run_id is None:  # before any job
            _discard(plan)
            _fail(ConfigError("mlflow.tracking_uri", plan.conf.mlflow.tracking_uri, str(err)), 2)
        raise


def _not_written(plan: gate.Plan, err: OSError) -> None:
    """One line for a directory that cannot take Hydra's files (a full disk): exit 2 and
    nothing left where nothing ran; exit 1 where a run or job had begun (its files kept)."""
    began = plan.out_dir is not None and (
        (plan.out_dir / "metrics.csv").exists() if not plan.multirun else not _no_jobs(plan.out_dir)
    )
    if not began:
        _discard(plan)
    why = err.strerror or type(err).__name__
    kept = "; what ran is kept" if began else "; nothing was run"
    _fail(f"cannot write {err.filename or plan.out_dir} ({why}){kept}", 1 if began else 2)


def _no_jobs(sweep_dir: Path | None) -> bool:
    """No job directory (`<N>/`) yet: Hydra's multirun.yaml and an empty summary at most."""
    return sweep_dir is not None and not any(d.name.isdigit() for d in sweep_dir.glob("*"))


def _discard(plan: gate.Plan) -> None:
    """Leave nothing behind of a run or sweep that never started."""
    gate.release(plan.out_dir)
    if plan.created is not None:
        shutil.rmtree(plan.created, ignore_errors=True)


def _fail(err: object, code: int) -> None:
    print(f"runner: error: {err}", file=sys.stderr)
    raise SystemExit(code)


def job(cfg: DictConfig) -> float | Pruned:
    """One job: its settings (checked by the gate already), its context, its run."""
    _http_defaults()  # again: a Ray or Slurm job runs in a process that never ran main()
    if _in_a_worker() and install(quiet=True).stop.is_set():
        return math.inf  # its sweep is stopping: the job does not start (KILLED in summary)
    from runner.run import run  # torch is imported only now

    hydra_cfg = HydraConfig.get()
    conf = OmegaConf.to_object(cfg)  # Hydra hands the job's config without its hydra node
    assert isinstance(conf, Config)
    try:
        with _refusing(conf):
            result = run(conf, _context(hydra_cfg))
    except NotStarted:
        if _in_a_worker():
            return math.inf
        raise
    return _returned(result, hydra_cfg.mode == RunMode.MULTIRUN)


def _in_a_worker() -> bool:
    """A parallel launcher's worker (joblib), or a Ray or Slurm job: not the command's own
    process. It handles the stop signals itself, quietly, and returns when stopped: an
    exception would make the launcher kill the other workers midway through their chunks."""
    return os.environ.get(MAIN_PID) != str(os.getpid())


def run_together(jobs: list[tuple[DictConfig, DictConfig]]) -> list[float | Pruned]:
    """The jobs of a sweep, (config, Hydra's config of it) each, handed over at once by the
    batched launcher (hydra_plugins/runner_batched), trained together where they can be
    (runner/batch.py)."""
    from runner.batch import run_jobs

    confs = [OmegaConf.to_object(cfg) for cfg, _ in jobs]
    ctxs = [_context(hydra_cfg, log_file=True) for _, hydra_cfg in jobs]
    returned: list[float | Pruned] = [math.inf] * len(jobs)
    with _refusing(confs[0]):
        for group in run_jobs(confs, ctxs):  # type: ignore[arg-type]
            for i, result in group:
                returned[i] = _returned(result, multirun=True)
    return returned


# Hydra hands its launcher the undecorated function: the batched launcher finds this there.
job.run_together = run_together  # type: ignore[attr-defined]
_hydra_main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(job)


def _context(hydra_cfg: DictConfig, log_file: bool = False) -> RunContext:
    """Where a job runs, from Hydra's config of it."""
    from runner.run import RunContext
    from runner.search import Study
    from runner.sweep import PARENT_VARIABLE

    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    search = multirun and str(hydra_cfg.sweeper.get("_target_", "")).endswith("OptunaSweeper")
    study = Study.from_env() if search else None  # set by the search's sweeper
    run_dir = Path(hydra_cfg.runtime.output_dir)
    return RunContext(
        launch_dir=Path(hydra_cfg.runtime.cwd),
        run_dir=run_dir,
        overrides=tuple(hydra_cfg.overrides.task),
        command=os.environ.get(COMMAND, "python -m runner"),
        sweep_parent=os.environ.get(PARENT_VARIABLE) or None if multirun else None,
        owns_terminal=os.environ.get(MAIN_PID) == str(os.getpid()),  # not a parallel worker
        in_sweep=multirun,
        # A grid's job may be reused; a search's trial trains (its sampler asked for it).
        reuse=multirun and str(hydra_cfg.sweeper.get("_target_", "")).endswith("GridSweeper"),
        log_file=run_dir / f"{hydra_cfg.job.name}.log" if log_file else None,
        study=study,
        trial=int(hydra_cfg.job.num) if study is not None else None,  # (job number = trial's)
    )


@contextlib.contextmanager
def _refusing(conf: Config) -> Iterator[None]:
    """Settings found bad only when the run starts end the command with one line."""
    from runner.mlflow_sink import StoreUnavailable

    try:
        yield
    except ConfigError as err:
        raise Refused(err) from None
    except StoreUnavailable as err:  # a single run: nothing is written, one line
        raise Refused(
            ConfigError("mlflow.tracking_uri", conf.mlflow.tracking_uri, str(err))
        ) from None


def _returned(result: Result, multirun: bool) -> float | Pruned:
    """What Hydra gets back from a job: its final loss, a pruned trial's Pruned, or a stop."""
    from runner.search import Pruned

    if result.status == "KILLED" or result.signal:  # (a stopped run whose store failed: FAILED)
        if _in_a_worker():
            return math.inf  # the sweep's own process stops the sweep (runner_sweeper)
        raise Stop(result.signal or 2)  # the sweep stops with its job
    if result.status == "PRUNED":
        return Pruned(result.pruned_at_epoch, result.pruned_by or "pruner")
    if result.status != "FINISHED" and not multirun:
        raise SystemExit(1)  # diverged, failed its gradient check, or lost its store
    # A sweep goes on past a failed job: inf ranks it last, and Optuna records a bad trial.
    return result.final_loss


def _http_defaults() -> None:
    """A tracking server that does not answer costs seconds, not minutes (users may override)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "4")


def print_help() -> None:
    """Usage, the config groups and every setting with its default, from the configs themselves."""
    groups = sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    lines = [
        "usage: python -m runner [-m] [key=value ...]",
        "",
        "Trains y = a*x + b (or y = a*x, or y = w . x + b on k features) by gradient descent",
        "with PyTorch autograd, logging every epoch to metrics.csv and MLflow. -m sweeps comma",
        "lists and range(...).",
        "",
        "config groups (group=option):",
        *(f"  {g.name:15s} {', '.join(sorted(f.stem for f in g.glob('*.yaml')))}" for g in groups),
        "  hydra/launcher  basic, joblib; ray, submitit_local, submitit_slurm (extra [launchers])",
        "",
        "settings (key=value) and their defaults:",
    ]
    for key, value in sorted(gate.compose_defaults().items()):
        lines.append(f"  {key}={value if isinstance(value, str) else json.dumps(value)}")
    lines += [
        "",
        "Hydra's settings a command line or preset may change (the rest are the runner's own):",
        *hydra_settings.help_lines(),
        "  hydra.sweeper.sampler.*, hydra.sweeper.pruner.*: a search's sampler and pruner by "
        "name, with their arguments",
        "  hydra.sweeper.params: a search space or grid, key -> sweep (the runner's own keys)",
        "",
        "examples:",
        "  python -m runner optimizer=sgd lr=0.05",
        "  python -m runner experiment=seed_002",
        "  python -m runner data=synthetic data.features=3 data.correlation=0.9 lr=0.3",
        "  python -m runner -m lr=0.01,0.05,0.1 optimizer=manual,sgd",
        "  python -m runner -m hydra/launcher=joblib 'lr=range(0.01,0.21,0.01)'",
        "",
        "flags: -m (sweep), --cfg job|hydra|all, --info, --config-dir DIR (presets of your own),",
        "--hydra-help. Hydra's own help: python -m runner --hydra-help",
    ]
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `python -m runner --help | head`
        let_go_of(sys.stdout)
