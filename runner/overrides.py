"""What one override may do, and what may reach Hydra: the runner's keys and groups, and the
allow-list of Hydra's settings (runner/hydra_settings.py), checked on the composed outcome."""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import yaml
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

from runner import hydra_settings
from runner.compose import (
    check_option,
    compose_checked,
    groups,
    known_keys_hint,
    schema_keys,
    search_entries,
)
from runner.config import ConfigError

# Keys under which a config names code to call: never from a command line.
CODE_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
# Launchers that come with an extra of this project.
EXTRAS = {"ray": "ray", "submitit_local": "submitit", "submitit_slurm": "submitit"}


PRESET_BYTES = 1_000_000  # a preset is a few lines; more is a mistake, or a way to stall
PRESET_ENTRIES = 10_000  # files and folders below a config dir, read whole before it is used


def presets_problem(directory: Path) -> str | None:
    """Why a directory of the user's presets is refused, or None. It holds presets for the
    runner's groups only (Hydra's settings are the runner's own), and each file is read
    whole in a moment: no YAML alias, which could expand into billions of nodes while the
    config composes, where no stop signal reaches."""
    if (directory / "hydra").exists():
        return ("presets for the runner's groups (experiment, data, optimizer, ...) without a "
                "hydra/ folder: Hydra's settings are the runner's own")  # fmt: skip
    for path in _presets(directory):
        if path is None:
            return f"a directory of presets (more than {PRESET_ENTRIES:,} entries below it)"
        if path.stat().st_size > PRESET_BYTES:
            return f"presets of at most {PRESET_BYTES:,} bytes ({path} is larger)"
        try:
            tokens = list(yaml.scan(path.read_text()))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            return f"presets that are YAML ({path}: {str(err).splitlines()[0]})"
        if any(isinstance(t, yaml.AliasToken) for t in tokens):
            return f"presets without YAML aliases (*name, in {path})"
    return None


def _presets(directory: Path) -> Iterator[Path | None]:
    """The YAML files below `directory` (not in hidden folders); None once more than
    PRESET_ENTRIES entries were seen (`--config-dir /` would walk the whole disk)."""
    seen = 0
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]  # .venv, .git: no presets
        seen += len(dirs) + len(files)
        if seen > PRESET_ENTRIES:
            yield None
            return
        yield from (Path(root) / name for name in sorted(files) if name.endswith(".yaml"))


def check_override(o: Override, multirun: bool, searchpath: list[str]) -> None:
    """What one override may do, from the override alone."""
    key = o.key_or_group
    words = set(key.replace("/", ".").split("."))
    if words & CODE_KEYS or key.startswith(("hydra.callbacks", "hydra/callbacks")):
        allowed = "not settable from the command line (code paths are fixed)"
        raise ConfigError(key, value_text(o), allowed)
    if o.is_hydra_override():
        _check_hydra_override(o)
    elif "/" not in key and key.split(".")[0] not in groups() | set(schema_keys()):
        raise ConfigError(key, value_text(o), known_keys_hint(key))
    elif key in groups() and not o.is_sweep_override() and not o.is_delete():
        check_option(key, str(o.value()), searchpath)
    if o.is_sweep_override() and not multirun:
        raise ConfigError(o.get_key_element(), value_text(o), "a single value (add -m to sweep)")


def _check_hydra_override(o: Override) -> None:
    """A `hydra` override names a launcher or sweeper the runner offers, or a key of the
    allow-list (runner/hydra_settings.py); its value is checked once composed."""
    key = o.key_or_group
    if o.is_sweep_override() or o.is_delete():
        raise ConfigError(key, value_text(o), "a single value (Hydra's settings are not swept "
                          "or removed)")  # fmt: skip
    if "/" in key:  # a group choice, e.g. hydra/launcher=joblib
        option = str(o.value())
        if key in hydra_settings.FIXED_GROUPS:
            raise ConfigError(key, option, "the runner's own (its logging is fixed)")
        if key not in hydra_settings.GROUPS:
            raise ConfigError(key, option, f"one of {', '.join(hydra_settings.GROUPS)}")
        if option not in hydra_settings.GROUPS[key]:
            raise ConfigError(key, option, "one of " + ", ".join(hydra_settings.GROUPS[key]))
        if key == "hydra/launcher" and option in EXTRAS and not launcher_installed(option):
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
        raise ConfigError(key, value_text(o), _hydra_keys_hint(key.lstrip("+")))


def _hydra_keys_hint(key: str) -> str:
    close = difflib.get_close_matches(key, list(hydra_settings.SETTINGS), n=1, cutoff=0.86)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"one of the Hydra settings the runner takes ({hint}python -m runner --help lists them)"


def launcher_installed(option: str) -> bool:
    module = {"ray": "hydra_plugins.hydra_ray_launcher"}.get(
        option, "hydra_plugins.hydra_submitit_launcher"
    )
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def value_text(o: Override) -> str:
    return o.input_line.split("=", 1)[1] if "=" in o.input_line else ""


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
    if entries != search_entries(searchpath):
        raise ConfigError("hydra.searchpath", entries, "set by --config-dir (or on the command "
                          "line), not by a preset")  # fmt: skip
    reference = _runner_own(choices["hydra/launcher"], choices["hydra/sweeper"])
    if first := next(hydra_settings.foreign(cfg, reference), None):
        raise ConfigError(*first)


@functools.cache
def _runner_own(launcher: str, sweeper: str) -> DictConfig:
    """The runner's own config for this launcher and sweeper: its `hydra` node is the rule."""
    return compose_checked([f"hydra/launcher={launcher}", f"hydra/sweeper={sweeper}"], {})
