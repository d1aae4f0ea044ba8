"""A sweep's size, counted without expanding it, every value it will set, and a search's
space and study: each checked as a single value would be, before anything is written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import signals
from runner.compose import (
    check_option,
    compose_checked,
    explain,
    first_line,
    groups,
    parse,
    replaced,
    typed,
    without_hydra,
)
from runner.config import Config, ConfigError, validate
from runner.overrides import check_hydra_node, check_override
from runner.ranges import count, float_range
from runner.reserve import unwritable
from runner.search import Study
from runner.store import (
    MLFLOW_TABLES,
    default_tracking_uri,
    password_problem,
    redact,
    sqlite_path,
    sqlite_tables,
)

OPTUNA_SWEEPER = "hydra_plugins.runner_optuna.OptunaSweeper"


def check_sweep_values(cfg: DictConfig, parsed: list[Override], searchpath: list[str]) -> None:
    """Every value the sweep will use, one key at a time, on top of the base config: the
    command line's and the search space's (hydra.sweeper.params), swept or not."""
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    fixed = [o for o in fixed if not o.startswith("hydra.searchpath=")] + searchpath
    base = typed(cfg)
    variant = without_hydra(cfg)  # one copy, each value set into it in turn
    params = sweeper_params(cfg, searchpath)
    for o in [*[o for o in parsed if o.is_sweep_override()], *params]:
        if o.is_hydra_override():
            continue  # refused by _check_hydra_override unless a single value
        key = o.key_or_group.lstrip("+")
        for value in _values_to_check(o):
            _honor_a_stop()  # (a sweep's values can take a while to check)
            line = f"{o.get_key_element()}={value}"
            given = {o.key_or_group.lstrip("+~"): str(value)}
            if o.key_or_group in groups():  # a group option: compose it, hydra node and all
                check_option(o.key_or_group, str(value), searchpath)
                composed = compose_checked([*fixed, line], given)
                check_hydra_node(composed, searchpath)
                typed(composed, given)
                continue
            try:  # a plain key: OmegaConf converts and type-checks it, no composition needed
                OmegaConf.update(variant, key, value, merge=True)
                converted = OmegaConf.select(variant, key, throw_on_missing=True)
            except OmegaConfBaseException as err:
                raise explain(err, given) from None
            if isinstance(converted, DictConfig):  # a whole section: OmegaConf builds it
                typed(variant, given)
                continue
            if isinstance(converted, ListConfig):
                converted = OmegaConf.to_container(converted)
            validate(replaced(base, key.split("."), converted))


def _honor_a_stop() -> None:
    """A stop signal noted while the command line is checked ends the check now."""
    if signals.STOPPER.stop.is_set():
        raise signals.NotStarted(signals.STOPPER.signum)


def sweeper_params(cfg: DictConfig, searchpath: list[str]) -> list[Override]:
    """hydra.sweeper.params (a preset's search space) as overrides, `key=sweep`, each held
    to what a command line may say: a job's setting, never Hydra's."""
    params = cfg.hydra.sweeper.get("params") or {}
    parsed = []
    for key, value in params.items():
        o = parse(f"{key}={value}")
        if o.is_hydra_override():
            raise ConfigError(f"hydra.sweeper.params.{key}", value, "a setting of the runner's "
                              "own (Hydra's settings are not swept)")  # fmt: skip
        check_override(o, True, searchpath)
        parsed.append(o)
    return parsed


def sweep_size(cfg: DictConfig, parsed: list[Override], searchpath: list[str]) -> int:
    """How many jobs a grid makes, counted without making them; a search's trials."""
    if cfg.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER:
        return int(cfg.hydra.sweeper.n_trials)
    by_key = {o.get_key_element(): o for o in sweeper_params(cfg, searchpath)}
    by_key |= {o.get_key_element(): o for o in parsed if not o.is_hydra_override()}
    return math.prod(count(o) for o in by_key.values())


def check_size(cfg: DictConfig, parsed: list[Override], searchpath: list[str],
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


def check_search(
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
        o for o in [*sweeper_params(cfg, searchpath), *parsed] if not o.is_hydra_override()
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
        if storage.startswith("sqlite:///") and path.exists() and path.stat().st_size:
            with path.open("rb") as file:
                if file.read(16) != b"SQLite format 3\x00":
                    return f"an SQLite database file ({path} is not one)"
        store = sqlite_path(tracking_uri) if tracking_uri else None
        if (store is not None and path.resolve() == store.resolve()) or (
            MLFLOW_TABLES & sqlite_tables(path)
        ):
            return "a file of its own (this is an MLflow store; the default is optuna.db beside it)"
        return unwritable(path.parent)
    from sqlalchemy.engine import make_url

    try:
        make_url(storage).get_dialect().import_dbapi()  # its driver is installed
    except Exception as err:
        return f"a database URL whose driver is installed ({first_line(err)})"
    return None
