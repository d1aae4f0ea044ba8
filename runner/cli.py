"""`python -m runner`: check the command line, then hand it to Hydra.

Every config Hydra is about to run is composed and checked here first, without torch
and without writing anything, so a bad value is one line on stderr and exit code 2
before any output directory, CSV or MLflow run exists.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from runner.config import Config, ConfigError, load
from runner.data import load_arrays
from runner.signals import Terminated
from runner.store import TrackingUnavailable, redact, server_problem
from runner.sweep import parent_run_id


def _conf_dir() -> Path:
    packaged = Path(__file__).parent / "conf"  # a wheel install carries the configs inside
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "conf"


CONF_DIR = _conf_dir()
MULTIRUN_FLAGS = ("-m", "--multirun")


def main() -> None:
    # A dead tracking server should cost seconds of retries, not minutes (users may override).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        check_command_line(sys.argv[1:])
        _hydra_main()
    except ConfigError as err:
        _exit_with(err)
    except KeyboardInterrupt:
        print("runner: interrupted (Ctrl-C); the runs so far are ended as KILLED", file=sys.stderr)
        raise SystemExit(130) from None
    except Terminated as err:
        print("runner: terminated (SIGTERM); the runs so far are ended as KILLED", file=sys.stderr)
        raise SystemExit(err.code) from None


def _exit_with(err: ConfigError) -> None:
    print(f"runner: error: {err}", file=sys.stderr)
    raise SystemExit(2)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    from runner.app import run  # torch is imported only now, after the config checked out

    job = HydraConfig.get()
    launch_dir = Path(job.runtime.cwd)
    multirun = job.mode == RunMode.MULTIRUN
    try:
        result = run(
            load(cfg),
            launch_dir=launch_dir,
            run_dir=Path(job.runtime.output_dir),
            overrides=list(job.overrides.task),
            parent_run_id=parent_run_id(launch_dir / job.sweep.dir) if multirun else None,
        )
    except ConfigError as err:  # found only on the machine itself, e.g. device=cuda
        _exit_with(err)
        raise  # unreachable; keeps type checkers content
    except TrackingUnavailable as err:
        print(f"runner: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if (result.status == "DIVERGED" or result.tracking_error) and not multirun:
        raise SystemExit(1)
    # A sweep goes on past a diverged job: inf ranks it last, and Optuna records a bad trial.
    return result.final_loss


def check_command_line(argv: list[str]) -> None:
    """Raise ConfigError for the first override that no run could use.

    A sweep is checked value by value: each value of each swept key is composed with
    the other overrides, so `lr=0.1,0` fails here instead of in its job.
    """
    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in argv):
        return  # --help, --cfg, -cn and friends: Hydra's own business
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    overrides = [_parse(a) for a in argv if a not in MULTIRUN_FLAGS]
    for o in overrides:
        _refuse_code_paths(o)
    fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
    variants = [fixed]
    for o in overrides:
        if not o.is_sweep_override():
            continue
        if not multirun:
            swept = o.input_line.split("=", 1)[1]
            raise ConfigError(o.get_key_element(), swept, "a single value (add -m to sweep)")
        variants += [[*fixed, f"{o.get_key_element()}={v}"] for v in _sweep_values(o)]
    confs = [_check(variant, multirun) for variant in variants]
    _check_tracking(confs[0])


def _check_tracking(conf: Config) -> None:
    """A tracking server that does not answer is found now, not after minutes of retries."""
    uri = conf.mlflow.tracking_uri
    if conf.mlflow.enabled and conf.mlflow.required and uri and (problem := server_problem(uri)):
        allowed = f"an MLflow server that answers ({problem}), or mlflow.required=false"
        raise ConfigError("mlflow.tracking_uri", redact(uri), allowed)


def _parse(arg: str) -> Override:
    try:
        return OverridesParser.create().parse_override(arg)
    except Exception as err:  # OverrideParseException, or the grammar's own errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "unparsable"
        raise ConfigError(
            "override", arg, f"key=value in Hydra's override grammar ({reason})"
        ) from None


def _refuse_code_paths(o: Override) -> None:
    """Which code runs is chosen by group names, never by import paths from the command line."""
    key = o.key_or_group
    if "_target_" in key or key.startswith(("hydra.callbacks", "hydra/callbacks")):
        raise ConfigError(
            key, o.value(), "not settable from the command line (code paths are fixed)"
        )


def _sweep_values(o: Override) -> Iterator[str]:
    if o.key_or_group.startswith("hydra"):
        return iter(())  # a sweeper's own search space, e.g. Optuna's interval(...)
    try:
        return o.sweep_string_iterator()
    except Exception:  # interval sweeps have no list of values to check one by one
        return iter(())


def _check(overrides: list[str], multirun: bool) -> Config:
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            output = "hydra.sweep.dir" if multirun else "hydra.run.dir"
            _check_output_dir(output, str(OmegaConf.select(cfg, output)))
    except ConfigError:
        raise
    except Exception as err:
        raise _explain(err, overrides) from None
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        _refuse_unknown_keys(cfg)
        conf = load(cfg)
    except OmegaConfBaseException as err:  # e.g. lr=${lr}: a value that does not resolve
        raise _explain(err, overrides) from None
    if conf.data.kind == "csv":
        load_arrays(conf.data, conf.seed, Path.cwd())  # reads and checks the file
    if conf.device == "cuda" and not _cuda_possible():
        raise ConfigError("device", "cuda", "cpu or auto (no CUDA build of torch or no GPU here)")
    return conf


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


def _refuse_unknown_keys(cfg: object) -> None:
    """`+newkey=1` slips past the schema's struct flag; name it here."""
    known = OmegaConf.structured(Config)
    for key in _leaf_keys(cfg):
        if OmegaConf.select(known, key, default=_MISSING) is _MISSING:
            raise ConfigError(key, OmegaConf.select(cfg, key), _known_keys_hint(key, known))


_MISSING = object()


def _leaf_keys(node: object, prefix: str = "") -> Iterator[str]:
    if OmegaConf.is_dict(node):
        for key in node:  # type: ignore[attr-defined]
            yield from _leaf_keys(node[key], f"{prefix}{key}.")  # type: ignore[index]
    elif prefix:
        yield prefix[:-1]


def _known_keys_hint(key: str, known: object) -> str:
    keys = list(_leaf_keys(known))
    close = difflib.get_close_matches(key, keys, n=1)
    return f"an existing key (did you mean {close[0]}?)" if close else "an existing key"


def _explain(err: Exception, overrides: list[str]) -> ConfigError:
    """Hydra's and OmegaConf's multi-line reports as one ConfigError."""
    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    if isinstance(err, MissingConfigException):
        found = re.search(r"Could not find '([^']+)/([^']+)'", str(err))
        if found:
            group, option = found.groups()
            options = ", ".join(err.options or []) or "none"
            return ConfigError(group, option, f"one of {options}")
    cause = err.__cause__
    if isinstance(cause, ConfigKeyError | AttributeError) and hasattr(cause, "full_key"):
        key = str(cause.full_key)
        value = given.get(key, given.get("+" + key))
        return ConfigError(key, value, _known_keys_hint(key, OmegaConf.structured(Config)))
    if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
        cause = err  # raised by OmegaConf itself, not wrapped by Hydra
    if isinstance(cause, ValidationError):
        key = str(cause.full_key)
        value = given.get(
            re.sub(r"\[\d+\]$", "", key), cause.value if hasattr(cause, "value") else None
        )
        return ConfigError(key, value, _expected_type(str(cause)))
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        return ConfigError(key, given.get(key), _first_line(cause))
    return ConfigError("config", " ".join(overrides), _first_line(err))


def _first_line(err: BaseException) -> str:
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
