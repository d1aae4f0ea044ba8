"""Checks that run before anything is written: a bad setting is one line and exit 2.

A single run is checked by CheckCallback.on_run_start on the config Hydra has just
composed, before Hydra creates the run directory: no extra composition. A multirun is
checked by `check_command_line` before Hydra starts, value by value: each swept value of
a key is set on the base config (a group option is composed), so `lr=0.1,0` fails before
the first job. Tests and tools call `check_command_line` for either.

Nothing here imports torch or MLflow.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from runner.config import CONF_DIR, Config, ConfigError, load
from runner.data import load_arrays
from runner.store import redact, server_problem

MULTIRUN_FLAGS = ("-m", "--multirun")


class CheckCallback(Callback):
    """Hydra calls this with the composed config before it creates any directory."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_error(check_composed, config, multirun=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_error(check_composed, config, multirun=True)  # sweeps: check_command_line


def report(err: ConfigError) -> NoReturn:
    """The one line a user sees for a bad setting; the process then exits with code 2."""
    print(f"runner: error: {err}", file=sys.stderr)
    raise SystemExit(2)


def _exit_on_error(check: Any, config: DictConfig, **kwargs: Any) -> None:
    # SystemExit passes Hydra's callback wrapper, which would turn an exception into a warning.
    try:
        check(config, **kwargs)
    except ConfigError as err:
        report(err)
    except OmegaConfBaseException as err:  # e.g. lr=${lr}: a value that does not resolve
        report(explain(err, task_overrides(config)))


def check_arguments(argv: list[str]) -> list[Override]:
    """What can be told from the arguments alone, before Hydra sees them: the grammar,
    a sweep without -m, and code paths (Hydra would import a callback before any check)."""
    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in argv):
        return []  # --help, --cfg, -cn and friends: Hydra's own business
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    parsed = [parse(a) for a in argv if a not in MULTIRUN_FLAGS]
    for o in parsed:
        refuse_code_paths(o)
        if o.is_sweep_override() and not multirun:
            swept = o.input_line.split("=", 1)[1]
            raise ConfigError(o.get_key_element(), swept, "a single value (add -m to sweep)")
    return parsed


def check_command_line(argv: list[str]) -> None:
    """Raise ConfigError for the first setting of `python -m runner ARGV` no run could use:
    what `python -m runner` checks, without running anything."""
    parsed = check_arguments(argv)
    if not parsed and any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in argv):
        return
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    overrides = [o.input_line for o in parsed]
    cfg = _compose([o.input_line for o in parsed if not o.is_sweep_override()])
    with open_dict(cfg):
        cfg.hydra.overrides.task = overrides  # as Hydra records them for its callbacks
    check_composed(cfg, multirun)
    if multirun:
        check_sweep_values(cfg)


def check_composed(cfg: DictConfig, multirun: bool) -> Config:
    """Check a config as Hydra composed it, `hydra` node included; return it typed."""
    overrides = task_overrides(cfg)
    for arg in overrides:
        refuse_code_paths(parse(arg))
    output = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    _check_output_dir(output, str(OmegaConf.select(cfg, output)))
    if multirun:
        _check_launcher(cfg)
    conf = _typed(_without_hydra(cfg), overrides)
    _check_tracking(conf)
    return conf


def check_sweep_values(cfg: DictConfig) -> None:
    """Every value the sweep will use, one key at a time, on top of the base config."""
    parsed = [parse(a) for a in task_overrides(cfg)]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = _without_hydra(cfg)
    for o in parsed:
        if not o.is_sweep_override() or o.key_or_group.startswith("hydra"):
            continue  # hydra.*: a sweeper's own search space, e.g. Optuna's
        for value in _sweep_values(o):
            line = f"{o.get_key_element()}={value}"
            if (CONF_DIR / o.key_or_group).is_dir():  # a group option: compose it
                _typed(_without_hydra(_compose([*fixed, line])), [line])
                continue
            variant = base.copy()  # a plain key: set it, no composition needed
            try:
                OmegaConf.update(variant, o.key_or_group, value, merge=True)
            except OmegaConfBaseException as err:
                raise explain(err, [line]) from None
            _typed(variant, [line])


def task_overrides(cfg: DictConfig) -> list[str]:
    """The command line's overrides as typed (`lr=${seed}` stays text, not resolved)."""
    return list(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False))


def _compose(overrides: list[str]) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)
    except Exception as err:
        raise explain(err, overrides) from None


def compose_defaults() -> dict[str, Any]:
    """Every setting of the default config, flattened: {"lr": 0.05, "model.bias": True, ...}."""
    cfg = _without_hydra(_compose([]))
    return {key: OmegaConf.select(cfg, key) for key in _leaf_keys(cfg)}


def _without_hydra(cfg: DictConfig) -> DictConfig:
    plain = cfg.copy()
    with open_dict(plain):
        del plain["hydra"]
    return plain


def _typed(cfg: DictConfig, overrides: list[str]) -> Config:
    """The Config for a composed config without its hydra node, every value checked."""
    try:
        _refuse_unknown_keys(cfg)
        conf = load(cfg)
    except OmegaConfBaseException as err:  # e.g. lr=${lr}: a value that does not resolve
        raise explain(err, overrides) from None
    if conf.data.kind == "csv":
        load_arrays(conf.data, conf.seed, Path.cwd())  # reads and checks the file
    if conf.device == "cuda" and not _cuda_possible():
        raise ConfigError("device", "cuda", "cpu or auto (no CUDA build of torch or no GPU here)")
    return conf


def parse(arg: str) -> Override:
    try:
        return OverridesParser.create().parse_override(arg)
    except Exception as err:  # OverrideParseException, or the grammar's own errors
        allowed = f"key=value in Hydra's override grammar ({first_line(err)})"
        raise ConfigError("override", arg, allowed) from None


def refuse_code_paths(o: Override) -> None:
    """Which code runs is chosen by group names, never by import paths from the command line."""
    key = o.key_or_group
    if "_target_" in key or key.startswith(("hydra.callbacks", "hydra/callbacks")):
        raise ConfigError(
            key, o.value(), "not settable from the command line (code paths are fixed)"
        )


def _sweep_values(o: Override) -> Iterator[Any]:
    try:
        return o.sweep_iterator()
    except Exception:  # interval sweeps have no list of values to check one by one
        return iter(())


def _check_tracking(conf: Config) -> None:
    """A tracking server that does not answer is found now, not after minutes of retries."""
    uri = conf.mlflow.tracking_uri
    if conf.mlflow.enabled and conf.mlflow.required and uri and (problem := server_problem(uri)):
        allowed = f"an MLflow server that answers ({problem}), or mlflow.required=false"
        raise ConfigError("mlflow.tracking_uri", redact(uri), allowed)


def _check_launcher(cfg: DictConfig) -> None:
    """Launchers that run the jobs elsewhere: what the jobs share with this process must exist."""
    target = str(OmegaConf.select(cfg, "hydra.launcher._target_", default=""))
    sweep_dir = str(OmegaConf.select(cfg, "hydra.sweep.dir"))
    if target.endswith(".RayLauncher") and not Path(sweep_dir).is_absolute():
        # Ray runs every job in the directory `ray start` ran in: a relative sweep dir puts the
        # jobs' outputs there, where neither mlflow_parent.json nor summary.csv is.
        allowed = "an absolute path with hydra/launcher=ray, on storage every Ray node shares"
        raise ConfigError("hydra.sweep.dir", sweep_dir, allowed)
    if target.endswith(".SlurmLauncher") and shutil.which("srun") is None:
        allowed = "submitit_local, joblib or basic here (srun is not on PATH: no Slurm login node)"
        raise ConfigError("hydra/launcher", "submitit_slurm", allowed)


def _check_output_dir(key: str, directory: str) -> None:
    """Hydra will create this directory: make sure it can, and leave nothing behind."""
    path = Path(directory).absolute()
    existing = next(p for p in [path, *path.parents] if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        tempfile.TemporaryDirectory(dir=existing).cleanup()  # the probe removes itself
        if existing != path and not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{existing} is not writable")
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(key, directory, f"a directory that can be written ({reason})") from None


def _refuse_unknown_keys(cfg: DictConfig) -> None:
    """`+newkey=1` slips past the schema's struct flag; name it here."""
    known = _schema_keys()
    for key in _leaf_keys(cfg):
        if key not in known and not any(key.startswith(f"{k}[") for k in known):
            raise ConfigError(key, OmegaConf.select(cfg, key), _known_keys_hint(key))


@functools.cache
def _schema_keys() -> frozenset[str]:
    return frozenset(_leaf_keys(OmegaConf.structured(Config)))


def _leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if OmegaConf.is_dict(node):
        for key in node:
            yield from _leaf_keys(node[key], f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1]


def _known_keys_hint(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(_schema_keys()), n=1)
    return f"an existing key (did you mean {close[0]}?)" if close else "an existing key"


def explain(err: BaseException, overrides: list[str]) -> ConfigError:
    """Hydra's and OmegaConf's multi-line reports as one ConfigError."""
    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    if isinstance(err, MissingConfigException):
        found = re.search(r"Could not find '([^']+)/([^']+)'", str(err))
        if found:
            group, option = found.groups()
            options = ", ".join(err.options or []) or "none"
            return ConfigError(group, option, f"one of {options}")
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    key = str(getattr(cause, "full_key", "") or "")
    if isinstance(cause, ConfigKeyError | AttributeError) and key:
        value = given.get(key, given.get("+" + key))
        return ConfigError(key, value, _known_keys_hint(key))
    if isinstance(cause, ValidationError) and key:
        value = given.get(re.sub(r"\[\d+\]$", "", key), getattr(cause, "value", None))
        return ConfigError(key, value, _expected_type(str(cause)))
    if isinstance(cause, OmegaConfBaseException) and key:
        return ConfigError(key, given.get(key), first_line(cause))
    return ConfigError("config", " ".join(overrides), first_line(err))


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _expected_type(message: str) -> str:
    if "converted to Float" in message:
        return "a number"
    if "converted to Integer" in message:
        return "an integer"
    if "valid bool" in message:
        return "true or false"
    if "is not Optional" in message:
        return "a value (null is not allowed here)"
    return message.splitlines()[0]


def _cuda_possible() -> bool:
    """Whether torch could see a GPU here, asked without importing torch (seconds)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    torch_lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    has_cuda_build = any(torch_lib.glob("libtorch_cuda*.so*"))
    has_driver = Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()
    return has_cuda_build and has_driver
