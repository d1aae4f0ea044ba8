"""The one gate: a command line is checked whole before Hydra sees it.

`check(argv)` reads the flags, checks each override (runner/overrides.py), composes the
config once with its `hydra` node and holds that node to the runner's own but for the
allow-list of runner/hydra_settings.py, checks every job setting against the schema
(runner/compose.py, runner/config.py) - for a sweep its size and every value it will set
(runner/sweep_checks.py) - and reserves the run's or sweep's own directory
(runner/reserve.py). Nothing before the reservation writes anything, and nothing here
imports torch or MLflow: a bad command line is one line and exit code 2 in a fraction of a
second.
"""

from __future__ import annotations

import argparse
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

from runner import hydra_settings
from runner.compose import (  # noqa: F401 - compose_checked, typed, parse: the gate's API too
    compose_checked,
    compose_defaults,
    parse,
    quoted,
    search_entries,
    typed,
)
from runner.config import Config, ConfigError, tracking_uri_problem
from runner.overrides import check_hydra_node, check_override, presets_problem, value_text
from runner.reserve import release, reserve_dir  # noqa: F401 - release: the gate's API too
from runner.search import Study
from runner.store import default_tracking_uri
from runner.sweep_checks import check_search, check_size, check_sweep_values

hydra_settings.guard_environment()  # ${oc.env:...} reads only the runner's own variables

MAX_ARGUMENT = 10_000  # Hydra's override parser takes minutes on a 100 KB value

# Keys under which a config names code to call: never from a command line.
CODE_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
OPTUNA_SWEEPER = "hydra_plugins.runner_optuna.OptunaSweeper"
# Launchers that come with an extra of this project.
EXTRAS = {"ray": "ray", "submitit_local": "submitit", "submitit_slurm": "submitit"}


class _Flags(argparse.ArgumentParser):
    """Hydra's flags that are safe to pass on; an unknown flag is a one-line error."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError("arguments", " ".join(self.argv), message)


def _flag_parser(argv: list[str]) -> _Flags:
    parser = _Flags(prog="python -m runner", add_help=False, allow_abbrev=False)
    parser.argv = argv  # type: ignore[attr-defined]
    add = parser.add_argument
    add("overrides", nargs="*")
    add("-m", "--multirun", action="store_true")
    add("-r", "--run", action="store_true")
    add("-c", "--cfg", choices=["job", "hydra", "all"])
    add("--resolve", action="store_true")
    add("-p", "--package")
    infos = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]
    add("-i", "--info", nargs="?", const="all", choices=infos)
    add("-sc", "--shell-completion", action="store_true")
    add("--hydra-help", action="store_true")
    add("--version", action="store_true")
    add("-cd", "--config-dir")
    # Refused below with a reason: they swap the project's own config for another, or load
    # a pickle (--experimental-rerun).
    add("-cp", "--config-path")
    add("-cn", "--config-name")
    add("--experimental-rerun")
    return parser


@dataclass(frozen=True)
class Plan:
    """What the gate found: what to hand Hydra, and what the run will do."""

    hydra_argv: list[str]  # flags and overrides for Hydra's main, the directory pinned
    overrides: list[str]  # the user's overrides, as typed
    conf: Config | None  # the checked settings (of the base config, for a sweep)
    multirun: bool
    runs_jobs: bool  # False for --cfg, --info, --hydra-help ...: Hydra prints, nothing runs
    out_dir: Path | None  # the run's or the sweep's directory, reserved for it
    created: Path | None = None  # the topmost directory the reservation created
    study: Study | None = None  # a search's study (hydra/sweeper=optuna): where, and named
    jobs_here: bool = True  # the jobs run in this process (not a joblib, Ray or Slurm worker)


def check(argv: list[str], reserve: bool = True) -> Plan:
    """Check `python -m runner ARGV` whole; raise ConfigError for the first problem.
    With `reserve`, the run's or sweep's directory is then created (tests check without)."""
    for arg in argv:
        if len(arg) > MAX_ARGUMENT:
            raise ConfigError("argument", arg, f"at most {MAX_ARGUMENT} characters")
    args = _flag_parser(argv).parse_intermixed_args(argv)
    for flag, value in (("--config-path", args.config_path), ("--config-name", args.config_name),
                        ("--experimental-rerun", args.experimental_rerun)):  # fmt: skip
        if value is not None:
            allowed = "the runner's config is its own conf/ (presets: experiment=NAME; yours: "
            raise ConfigError(flag, value, allowed + "--config-dir DIR)")
    parsed = [parse(a) for a in args.overrides]
    searchpath = _search_path(args.config_dir, parsed)
    for o in parsed:
        check_override(o, args.multirun, searchpath)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    fixed = [o for o in fixed if not o.startswith("hydra.searchpath=")] + searchpath
    cfg = compose_checked(fixed, _given(parsed))
    check_hydra_node(cfg, searchpath)
    runs_jobs = not (args.cfg or args.info or args.shell_completion or args.hydra_help
                     or args.version)  # fmt: skip
    conf = typed(cfg, _given(parsed))
    _check_default_store(conf)
    _check_hydra_settings(cfg, args.multirun)
    study = None
    if args.multirun:
        assert conf is not None
        check_size(cfg, parsed, searchpath, conf)
        check_sweep_values(cfg, parsed, searchpath)
        study = check_search(cfg, parsed, conf, searchpath)
    out_dir, created = (
        reserve_dir(cfg, parsed, args.multirun) if runs_jobs and reserve else (None, None)
    )
    hydra_argv = _flags_for_hydra(args) + [
        o.input_line for o in parsed if not o.input_line.startswith("hydra.searchpath=")
    ]
    hydra_argv += searchpath
    if out_dir is not None:
        key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
        hydra_argv.append(f"{key}={quoted(str(out_dir))}")
    launcher = str(cfg.hydra.launcher.get("_target_", ""))
    jobs_here = not args.multirun or launcher.endswith(("BasicLauncher", "BatchedLauncher"))
    return Plan(hydra_argv, list(args.overrides), conf, args.multirun, runs_jobs, out_dir, created,
                study, jobs_here)  # fmt: skip


def _flags_for_hydra(args: argparse.Namespace) -> list[str]:
    flags = ["--multirun"] if args.multirun else []
    flags += ["--cfg", args.cfg] if args.cfg else []
    flags += ["--resolve"] if args.resolve else []
    flags += ["--package", args.package] if args.package else []
    flags += ["--info", args.info] if args.info else []
    flags += ["--shell-completion"] if args.shell_completion else []
    flags += ["--hydra-help"] if args.hydra_help else []
    flags += ["--version"] if args.version else []
    return flags


def _given(parsed: list[Override]) -> dict[str, str]:
    """key -> the value as typed, for messages."""
    return {o.key_or_group.lstrip("+~"): value_text(o) for o in parsed}


def _search_path(config_dir: str | None, parsed: list[Override]) -> list[str]:
    """--config-dir DIR and hydra.searchpath as one override, so the gate and Hydra compose
    from the very same directories."""
    entries: dict[str, str] = {}  # file://DIR -> the key that named it
    for o in parsed:
        if o.key_or_group == "hydra.searchpath":
            entries |= {str(e): "hydra.searchpath" for e in o.value() or []}
    if config_dir is not None:
        path = Path(config_dir).absolute()
        if not path.is_dir():
            raise ConfigError("--config-dir", config_dir, "an existing directory")
        entries[f"file://{path}"] = "--config-dir"
    for entry, key in entries.items():
        if problem := presets_problem(Path(entry.removeprefix("file://"))):
            raise ConfigError(key, entry.removeprefix("file://"), problem)
    return [f"hydra.searchpath=[{','.join(quoted(e) for e in entries)}]"] if entries else []


def _check_default_store(conf: Config) -> None:
    """mlflow.tracking_uri=null means mlflow.db here: it must be a database file it can use."""
    if conf.mlflow.enabled and conf.mlflow.tracking_uri is None:
        uri = default_tracking_uri(Path.cwd())
        if problem := tracking_uri_problem(uri):
            raise ConfigError("mlflow.tracking_uri", None, f"null is {uri}, which needs {problem}")


def _check_hydra_settings(cfg: DictConfig, multirun: bool) -> None:
    """What Hydra will do with its own settings: where it writes, how it launches."""
    if not multirun:
        return
    target = str(cfg.hydra.launcher.get("_target_", ""))
    if target.endswith("RayLauncher") and not Path(str(cfg.hydra.sweep.dir)).is_absolute():
        # Ray runs every job in the directory `ray start` ran in: a relative sweep dir puts
        # the jobs' outputs there, where summary.csv never looks.
        allowed = "an absolute path with hydra/launcher=ray, on storage every Ray node shares"
        raise ConfigError("hydra.sweep.dir", str(cfg.hydra.sweep.dir), allowed)
    if target.endswith("SlurmLauncher") and shutil.which("srun") is None:
        allowed = "submitit_local, joblib or basic here (srun is not on PATH: no Slurm login node)"
        raise ConfigError("hydra/launcher", "submitit_slurm", allowed)


_CLAIMED: dict[Path, int] = {}  # directory -> the open descriptor that holds its lock


# --- what the schema knows about its keys --------------------------------------------
