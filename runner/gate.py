"""The one gate: a command line is checked whole before Hydra sees it.

`check(argv)` reads the flags, composes the config once (the `hydra` node included),
refuses anything that would make Hydra import or call code that the project's conf/ and
the installed Hydra plugins do not name, checks every job setting against the schema
(runner/config.py) - for a sweep, every swept value - and reserves the run's or sweep's
own directory. Nothing before the reservation writes anything, and nothing here imports
torch or MLflow: a bad command line is one line and exit code 2 in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import fcntl
import functools
import math
import os
import shutil
import typing
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from enum import Enum
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from runner import hydra_settings, signals
from runner.config import CONF_DIR, Config, ConfigError, tracking_uri_problem, validate
from runner.ranges import count, float_range
from runner.search import Study
from runner.store import (
    MLFLOW_TABLES,
    default_tracking_uri,
    password_problem,
    redact,
    sqlite_path,
    sqlite_tables,
)

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
        _check_override(o, args.multirun, searchpath)
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
        _check_size(cfg, parsed, searchpath, conf)
        check_sweep_values(cfg, parsed, searchpath)
        study = _check_search(cfg, parsed, conf, searchpath)
    out_dir, created = (
        _reserve(cfg, parsed, args.multirun) if runs_jobs and reserve else (None, None)
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


def parse(arg: str) -> Override:
    try:
        return OverridesParser.create().parse_override(arg)
    except Exception as err:  # OverrideParseException, or the grammar's own errors
        allowed = f"key=value in Hydra's override grammar ({first_line(err)})"
        raise ConfigError("override", arg, allowed) from None


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def quoted(text: str) -> str:
    """A string as one quoted value of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_override(o: Override, multirun: bool, searchpath: list[str]) -> None:
    """What one override may do, from the override alone."""
    key = o.key_or_group
    words = set(key.replace("/", ".").split("."))
    if words & CODE_KEYS or key.startswith(("hydra.callbacks", "hydra/callbacks")):
        allowed = "not settable from the command line (code paths are fixed)"
        raise ConfigError(key, _value_text(o), allowed)
    if o.is_hydra_override():
        _check_hydra_override(o)
    elif "/" not in key and key.split(".")[0] not in _groups() | set(_schema_keys()):
        raise ConfigError(key, _value_text(o), _known_keys_hint(key))
    elif key in _groups() and not o.is_sweep_override() and not o.is_delete():
        _check_option(key, str(o.value()), searchpath)
    if o.is_sweep_override() and not multirun:
        raise ConfigError(o.get_key_element(), _value_text(o), "a single value (add -m to sweep)")


def _check_hydra_override(o: Override) -> None:
    """A `hydra` override names a launcher or sweeper the runner offers, or a key of the
    allow-list (runner/hydra_settings.py); its value is checked once composed."""
    key = o.key_or_group
    if o.is_sweep_override() or o.is_delete():
        raise ConfigError(key, _value_text(o), "a single value (Hydra's settings are not swept "
                          "or removed)")  # fmt: skip
    if "/" in key:  # a group choice, e.g. hydra/launcher=joblib
        option = str(o.value())
        if key in hydra_settings.FIXED_GROUPS:
            raise ConfigError(key, option, "the runner's own (its logging is fixed)")
        if key not in hydra_settings.GROUPS:
            raise ConfigError(key, option, f"one of {', '.join(hydra_settings.GROUPS)}")
        if option not in hydra_settings.GROUPS[key]:
            raise ConfigError(key, option, "one of " + ", ".join(hydra_settings.GROUPS[key]))
        if key == "hydra/launcher" and option in EXTRAS and not _launcher_installed(option):
            extra = EXTRAS[option]
            allowed = f"installed first: pip install 'runner[{extra}]' (or -e '.[{extra}]')"
            raise ConfigError(key, option, allowed)
        return
    if key == "hydra.searchpath":
        for entry in o.value() or []:
            if not str(entry).startswith("file://"):
                allowed = "a list of file:// directories (pkg:// would import a package)"
                raise ConfigError(key, entry, allowed)
        return
    if hydra_settings.setting(key.lstrip("+")) is None:
        raise ConfigError(key, _value_text(o), _hydra_keys_hint(key.lstrip("+")))


def _hydra_keys_hint(key: str) -> str:
    close = difflib.get_close_matches(key, list(hydra_settings.SETTINGS), n=1, cutoff=0.86)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"one of the Hydra settings the runner takes ({hint}python -m runner --help lists them)"


def _launcher_installed(option: str) -> bool:
    module = {"ray": "hydra_plugins.hydra_ray_launcher"}.get(
        option, "hydra_plugins.hydra_submitit_launcher"
    )
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _value_text(o: Override) -> str:
    return o.input_line.split("=", 1)[1] if "=" in o.input_line else ""


def _given(parsed: list[Override]) -> dict[str, str]:
    """key -> the value as typed, for messages."""
    return {o.key_or_group.lstrip("+~"): _value_text(o) for o in parsed}


def _search_path(config_dir: str | None, parsed: list[Override]) -> list[str]:
    """--config-dir DIR and hydra.searchpath as one override, so the gate and Hydra compose
    from the very same directories."""
    entries: list[str] = []
    for o in parsed:
        if o.key_or_group == "hydra.searchpath":
            entries += [str(e) for e in o.value() or []]
    if config_dir is not None:
        path = Path(config_dir).absolute()
        if not path.is_dir():
            raise ConfigError("--config-dir", config_dir, "an existing directory")
        entries.append(f"file://{path}")
    for entry in entries:
        if (Path(entry.removeprefix("file://")) / "hydra").exists():
            allowed = (
                "presets for the runner's groups (experiment, data, optimizer, ...) "
                "without a hydra/ folder: Hydra's settings are the runner's own"
            )
            raise ConfigError("--config-dir", entry.removeprefix("file://"), allowed)
    return [f"hydra.searchpath=[{','.join(quoted(e) for e in entries)}]"] if entries else []


@functools.cache
def _groups() -> frozenset[str]:
    return frozenset(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def _check_option(group: str, option: str, searchpath: list[str]) -> None:
    """A group's options are the YAML files of conf/<group>/ and of the user's own dirs."""
    dirs = [CONF_DIR, *(Path(e.removeprefix("file://")) for e in _search_entries(searchpath))]
    options = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
    if option not in options and option != "null":
        raise ConfigError(group, option, "one of " + ", ".join(options))


def _search_entries(searchpath: list[str]) -> list[str]:
    if not searchpath:
        return []
    return [str(e) for e in parse(searchpath[0]).value()]


def compose_checked(overrides: list[str], given: dict[str, str]) -> DictConfig:
    """The config Hydra will compose from these overrides, `hydra` node included."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as err:
        group, _, option = str(err.missing_cfg_file or "config/?").rpartition("/")
        raise ConfigError(group, option, "one of " + ", ".join(err.options or [])) from None
    except Exception as err:
        raise _explain(err, given) from None


def _explain(err: BaseException, given: dict[str, str]) -> ConfigError:
    """An OmegaConf error as one ConfigError, from the schema's knowledge of the key."""
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__ or err
    key = str(getattr(cause, "full_key", "") or "")
    base = key.split("[")[0]
    value = given.get(base, getattr(cause, "value", None))
    if isinstance(cause, InterpolationResolutionError):
        return ConfigError(key or "config", value, f"a value that resolves ({first_line(cause)})")
    if base in _schema_keys():
        return ConfigError(base, value, expected(base))
    if key and isinstance(cause, OmegaConfBaseException):
        return ConfigError(key, value, first_line(cause))
    return ConfigError("config", " ".join(f"{k}={v}" for k, v in given.items()), first_line(err))


def typed(cfg: DictConfig, given: dict[str, str] | None = None) -> Config:
    """The job's settings as a checked Config (the `hydra` node left out)."""
    job = _without_hydra(cfg)
    try:
        _refuse_unknown_keys(job)
        conf = OmegaConf.to_object(job)
    except OmegaConfBaseException as err:  # e.g. lr=${lr}: a value that does not resolve
        raise _explain(err, given or {}) from None
    assert isinstance(conf, Config)
    validate(conf)
    return conf


def check_hydra_node(cfg: DictConfig, searchpath: list[str]) -> None:
    """Whatever the command line and the YAML files it reached did, the composed `hydra`
    node is the runner's own for the chosen launcher and sweeper, but for the allow-list's
    keys, each within its range (runner/hydra_settings.py)."""
    choices = cfg.hydra.runtime.choices
    for group, options in hydra_settings.GROUPS.items():
        if choices.get(group) not in options:
            raise ConfigError(group, choices.get(group), "one of " + ", ".join(options))
    for group, option in hydra_settings.FIXED_GROUPS.items():
        if choices.get(group) != option:
            raise ConfigError(group, choices.get(group), "the runner's own (its logging is fixed)")
    entries = [str(e) for e in cfg.hydra.searchpath or []]
    if entries != _search_entries(searchpath):
        raise ConfigError("hydra.searchpath", entries, "set by --config-dir (or on the command "
                          "line), not by a preset")  # fmt: skip
    reference = _runner_own(choices["hydra/launcher"], choices["hydra/sweeper"])
    for key, value, allowed in hydra_settings.foreign(cfg, reference):
        raise ConfigError(key, value, allowed)


@functools.cache
def _runner_own(launcher: str, sweeper: str) -> DictConfig:
    """The runner's own config for this launcher and sweeper: its `hydra` node is the rule."""
    return compose_checked([f"hydra/launcher={launcher}", f"hydra/sweeper={sweeper}"], {})


def _walk(node: Any, prefix: str = "", lists: bool = True) -> typing.Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) of a config, interpolations left as written; with
    lists=False a list is one leaf."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _walk(child, f"{prefix}.{key}" if prefix else str(key), lists)
    elif isinstance(node, list) and lists:
        for i, item in enumerate(node):
            yield from _walk(item, f"{prefix}[{i}]")
    else:
        yield prefix, node


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


def check_sweep_values(cfg: DictConfig, parsed: list[Override], searchpath: list[str]) -> None:
    """Every value the sweep will use, one key at a time, on top of the base config: the
    command line's and the search space's (hydra.sweeper.params), swept or not."""
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    fixed = [o for o in fixed if not o.startswith("hydra.searchpath=")] + searchpath
    base = typed(cfg)
    variant = _without_hydra(cfg)  # one copy, each value set into it in turn
    params = _sweeper_params(cfg, searchpath)
    for o in [*[o for o in parsed if o.is_sweep_override()], *params]:
        if o.is_hydra_override():
            continue  # refused by _check_hydra_override unless a single value
        key = o.key_or_group.lstrip("+")
        for value in _values_to_check(o):
            _honor_a_stop()  # (a sweep's values can take a while to check)
            line = f"{o.get_key_element()}={value}"
            given = {o.key_or_group.lstrip("+~"): str(value)}
            if o.key_or_group in _groups():  # a group option: compose it, hydra node and all
                _check_option(o.key_or_group, str(value), searchpath)
                composed = compose_checked([*fixed, line], given)
                check_hydra_node(composed, searchpath)
                typed(composed, given)
                continue
            try:  # a plain key: OmegaConf converts and type-checks it, no composition needed
                OmegaConf.update(variant, key, value, merge=True)
                converted = OmegaConf.select(variant, key, throw_on_missing=True)
            except OmegaConfBaseException as err:
                raise _explain(err, given) from None
            if isinstance(converted, DictConfig):  # a whole section: OmegaConf builds it
                typed(variant, given)
                continue
            if isinstance(converted, ListConfig):
                converted = OmegaConf.to_container(converted)
            validate(_replaced(base, key.split("."), converted))


def _honor_a_stop() -> None:
    """A stop signal noted while the command line is checked ends the check now."""
    if signals.STOPPER.stop.is_set():
        raise signals.NotStarted(signals.STOPPER.signum)


def _sweeper_params(cfg: DictConfig, searchpath: list[str]) -> list[Override]:
    """hydra.sweeper.params (a preset's search space) as overrides, `key=sweep`, each held
    to what a command line may say: a job's setting, never Hydra's."""
    params = cfg.hydra.sweeper.get("params") or {}
    parsed = []
    for key, value in params.items():
        o = parse(f"{key}={value}")
        if o.is_hydra_override():
            raise ConfigError(f"hydra.sweeper.params.{key}", value, "a setting of the runner's "
                              "own (Hydra's settings are not swept)")  # fmt: skip
        _check_override(o, True, searchpath)
        parsed.append(o)
    return parsed


def sweep_size(cfg: DictConfig, parsed: list[Override], searchpath: list[str]) -> int:
    """How many jobs a grid makes, counted without making them; a search's trials."""
    if cfg.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER:
        return int(cfg.hydra.sweeper.n_trials)
    by_key = {o.get_key_element(): o for o in _sweeper_params(cfg, searchpath)}
    by_key |= {o.get_key_element(): o for o in parsed if not o.is_hydra_override()}
    return math.prod(count(o) for o in by_key.values())


def _check_size(cfg: DictConfig, parsed: list[Override], searchpath: list[str],
                conf: Config) -> None:  # fmt: skip
    size = sweep_size(cfg, parsed, searchpath)
    swept = " ".join(o.input_line for o in parsed if o.is_sweep_override()) or "(no list)"
    if size == 0:
        raise ConfigError("sweep", swept, "a sweep of at least one job (an empty range?)")
    if size > conf.sweep.max_jobs:
        allowed = (f"at most sweep.max_jobs={conf.sweep.max_jobs:,} jobs ({size:,} asked; "
                   "raise sweep.max_jobs to run more)")  # fmt: skip
        raise ConfigError("sweep", swept, allowed)


def _values_to_check(o: Override) -> list[Any]:
    """The values a sweep will set: a list's or a range's (a float range as the sweeper
    computes it), or an interval's two ends (every sample lies between them)."""
    if not o.is_sweep_override():
        return [o.value()]
    if o.is_interval_sweep():
        return [o.value().start, o.value().end]
    texts = float_range(o)
    return [float(t) for t in texts] if texts else list(o.sweep_iterator())


def _check_search(
    cfg: DictConfig, parsed: list[Override], conf: Config, searchpath: list[str]
) -> Study | None:
    """A search's own settings (hydra/sweeper=optuna), and where its study is."""
    sweeper = cfg.hydra.sweeper
    if sweeper.get("_target_") != OPTUNA_SWEEPER:
        return None
    from runner import search

    for key in ("n_trials", "n_jobs", "report_every"):
        value = sweeper.get(key)
        if (value is None and key != "report_every") or (value is not None and value < 1):
            allowed = "an integer >= 1" + " or null" * (key == "report_every")
            raise ConfigError(f"hydra.sweeper.{key}", value, allowed)
    storage = sweeper.storage
    if storage is not None and not str(storage).startswith(search.JOURNAL) and "://" not in storage:
        allowed = "null (optuna.db beside the MLflow store), a database URL or journal:PATH"
        raise ConfigError("hydra.sweeper.storage", storage, allowed)
    if storage is not None and (problem := password_problem(str(storage), "storage")):
        raise ConfigError("hydra.sweeper.storage", redact(str(storage)), problem)
    # A bad name or argument: one line (Optuna's own check, by building them).
    search.sampler(OmegaConf.to_container(sweeper.sampler, resolve=True))
    search.pruner(OmegaConf.to_container(sweeper.pruner, resolve=True))
    overrides = [
        o for o in [*_sweeper_params(cfg, searchpath), *parsed] if not o.is_hydra_override()
    ]
    if not any(o.is_sweep_override() for o in overrides):
        allowed = ("a search space: a swept key, e.g. \"lr=tag(log,interval(1e-3,1))\" or "
                   "optimizer=choice(sgd,adam), or search=optuna_lr")  # fmt: skip
        raise ConfigError("hydra.sweeper.params", dict(sweeper.params), allowed)
    lines = [o.input_line for o in overrides]
    for line in lines:
        try:
            search.search_space([line])
        except ValueError as err:  # Optuna's own check, e.g. a log scale from 0
            key, value = line.split("=", 1)
            raise ConfigError(key, value, f"a search space Optuna takes ({err})") from None
    uri = conf.mlflow.tracking_uri or default_tracking_uri(Path.cwd())
    study = search.locate(sweeper, lines, Path.cwd(), uri if conf.mlflow.enabled else None,
                          conf.epochs)  # fmt: skip
    if problem := _storage_problem(study.storage, uri if conf.mlflow.enabled else None):
        shown = redact(study.storage)
        raise ConfigError(
            "hydra.sweeper.storage", redact(str(sweeper.storage)), f"{shown}: {problem}"
        )
    return study


def _storage_problem(storage: str, tracking_uri: str | None) -> str | None:
    """Why a study cannot be stored there (checked without writing anything), or None."""
    from runner.search import JOURNAL

    path = Path(storage.removeprefix(JOURNAL).removeprefix("sqlite:///"))
    if storage.startswith((JOURNAL, "sqlite:///")):
        if not path.parent.is_dir():
            return f"no directory {path.parent}"
        if path.exists() and not path.is_file():
            return f"{path} is not a file"
        store = sqlite_path(tracking_uri) if tracking_uri else None
        if (store is not None and path.resolve() == store.resolve()) or (
            MLFLOW_TABLES & sqlite_tables(path)
        ):
            return "a file of its own (this is an MLflow store; the default is optuna.db beside it)"
        return _unwritable(path.parent)
    from sqlalchemy.engine import make_url

    try:
        make_url(storage).get_dialect().import_dbapi()  # its driver is installed
    except Exception as err:
        return f"a database URL whose driver is installed ({first_line(err)})"
    return None


def _without_hydra(cfg: DictConfig) -> DictConfig:
    job = cfg.copy()
    with open_dict(job):
        job.pop("hydra", None)
    return job


def _replaced(node: Any, path: list[str], value: Any) -> Any:
    """A copy of the dataclass `node` with the field at `path` set to `value`."""
    head, *rest = path
    new = _replaced(getattr(node, head), rest, value) if rest else value
    return dataclasses.replace(node, **{head: new})


def _reserve(cfg: DictConfig, parsed: list[Override], multirun: bool) -> tuple[Path, Path | None]:
    """A directory of the run's (or the sweep's) own, created now: two runs started in the
    same second never share one. An explicit directory that holds a run is refused.
    Returns it and the topmost directory created for it (removed if the run never starts)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    path = Path(str(OmegaConf.select(cfg, key))).absolute()
    _check_writable(key, path)
    missing = [p for p in (*reversed(path.parents), path) if not p.exists()]
    if any(o.key_or_group == key for o in parsed):  # the user's own choice of directory
        if _holds_a_run(path, multirun):
            raise ConfigError(key, str(path), "a directory that holds no earlier run or sweep")
        path.mkdir(parents=True, exist_ok=True)
        if not _claim(path):  # two commands started together: the second sees the first here
            raise ConfigError(key, str(path), "a directory no other live run or sweep writes to")
        return path, missing[0] if missing else None
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()  # atomic: of two runs started in the same second, one gets it
            return candidate, missing[0] if missing else candidate
        except FileExistsError:
            continue
    raise ConfigError(key, str(path), "a pattern that leads to fewer than 10,000 runs a second")


_CLAIMED: dict[Path, int] = {}  # directory -> the open descriptor that holds its lock


def _claim(path: Path) -> bool:
    """An exclusive lock on the directory for as long as this process lives (the kernel
    drops it when the process ends, however it ends); False when another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _CLAIMED[path] = fd
    return True


def release(path: Path | None) -> None:
    """Let go of a directory this process claimed (a run that never started)."""
    if path is not None and (fd := _CLAIMED.pop(path, None)) is not None:
        os.close(fd)


def _holds_a_run(path: Path, multirun: bool) -> bool:
    if not path.is_dir():
        return False
    if multirun:
        return any(p.name.isdigit() or p.name in ("summary.csv", "multirun.yaml")
                   for p in path.iterdir())  # fmt: skip
    return any((path / name).exists() for name in (".hydra", "metrics.csv", "result.json"))


def _check_writable(key: str, path: Path) -> None:
    """The directory can be created and written; the probe leaves nothing behind."""
    existing = next(p for p in [path, *path.parents] if p.exists())
    if reason := _unwritable(existing):
        raise ConfigError(key, str(path), f"a directory that can be written ({reason})")


def _unwritable(directory: Path) -> str | None:
    """Why nothing can be created in an existing `directory`, or None (a probe, removed)."""
    if not directory.is_dir():
        return f"{directory} is a file"
    try:
        probe = directory / f".runner-probe-{os.getpid()}-{datetime.now().timestamp()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        return err.strerror or str(err)
    return None


# --- what the schema knows about its keys --------------------------------------------


@functools.cache
def _schema_types() -> dict[str, Any]:
    """Every key of the schema (sections too) -> its type hint."""

    def walk(schema: type, prefix: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        hints = typing.get_type_hints(schema)
        for f in fields(schema):
            hint = hints[f.name]
            found[prefix + f.name] = hint
            if is_dataclass(hint):
                found |= walk(hint, f"{prefix}{f.name}.")
        return found

    return walk(Config, "")


def _schema_keys() -> list[str]:
    return list(_schema_types())


def expected(key: str) -> str:
    """What a key takes, in words, from its type in the schema."""
    hint = _schema_types()[key]
    optional = typing.get_origin(hint) is typing.Union
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if isinstance(hint, type) and issubclass(hint, Enum):
        words = "one of " + ", ".join(m.value for m in hint)
    elif typing.get_origin(hint) in (list, typing.List):  # noqa: UP006
        words = "a list of numbers, e.g. [1.0, 2.0]"
    else:
        words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
            hint, "a value of the schema's type"
        )
    return f"{words} or null" if optional else words


def _refuse_unknown_keys(job: DictConfig) -> None:
    """`+newkey=1` slips past the schema's struct flag; name it here."""
    known = set(_schema_keys())
    for key, value in _walk(job):
        base = key.split("[")[0]
        if base not in known:
            raise ConfigError(base, value, _known_keys_hint(base))


def _known_keys_hint(key: str) -> str:
    close = difflib.get_close_matches(key, _schema_keys(), n=1)
    return f"an existing key (did you mean {close[0]}?)" if close else "an existing key"


def compose_defaults() -> dict[str, Any]:
    """Every setting of the default config: {"lr": 0.05, "model.bias": True, ...}."""
    cfg = compose_checked([], {})
    with open_dict(cfg):
        del cfg["hydra"]
    return dict(_walk(cfg, lists=False))
