"""A config as Hydra will compose it, typed by the schema, and what the schema knows of its
keys: the ground the gate (runner/gate.py) stands on. Nothing here imports torch or MLflow."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from runner.config import CONF_DIR, Config, ConfigError, validate


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


@functools.cache
def groups() -> frozenset[str]:
    return frozenset(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def check_option(group: str, option: str, searchpath: list[str]) -> None:
    """A group's options are the YAML files of conf/<group>/ and of the user's own dirs."""
    dirs = [CONF_DIR, *(Path(e.removeprefix("file://")) for e in search_entries(searchpath))]
    options = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
    if option not in options and option != "null":
        raise ConfigError(group, option, "one of " + ", ".join(options))


def search_entries(searchpath: list[str]) -> list[str]:
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
        raise explain(err, given) from None


def explain(err: BaseException, given: dict[str, str]) -> ConfigError:
    """An OmegaConf error as one ConfigError, from the schema's knowledge of the key."""
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__ or err
    key = str(getattr(cause, "full_key", "") or "")
    base = key.split("[")[0]
    value = given.get(base, getattr(cause, "value", None))
    if isinstance(cause, InterpolationResolutionError):
        return ConfigError(key or "config", value, f"a value that resolves ({first_line(cause)})")
    if base in schema_keys():
        return ConfigError(base, value, expected(base))
    if key and isinstance(cause, OmegaConfBaseException):
        return ConfigError(key, value, first_line(cause))
    return ConfigError("config", " ".join(f"{k}={v}" for k, v in given.items()), first_line(err))


def typed(cfg: DictConfig, given: dict[str, str] | None = None) -> Config:
    """The job's settings as a checked Config (the `hydra` node left out)."""
    job = without_hydra(cfg)
    try:
        refuse_unknown_keys(job)
        conf = OmegaConf.to_object(job)
    except OmegaConfBaseException as err:  # e.g. lr=${lr}: a value that does not resolve
        raise explain(err, given or {}) from None
    assert isinstance(conf, Config)
    validate(conf)
    return conf


def without_hydra(cfg: DictConfig) -> DictConfig:
    job = cfg.copy()
    with open_dict(job):
        job.pop("hydra", None)
    return job


def replaced(node: Any, path: list[str], value: Any) -> Any:
    """A copy of the dataclass `node` with the field at `path` set to `value`."""
    head, *rest = path
    new = replaced(getattr(node, head), rest, value) if rest else value
    return dataclasses.replace(node, **{head: new})


def walk(node: Any, prefix: str = "", lists: bool = True) -> typing.Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) of a config, interpolations left as written; with
    lists=False a list is one leaf."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    if isinstance(node, dict):
        for key, child in node.items():
            yield from walk(child, f"{prefix}.{key}" if prefix else str(key), lists)
    elif isinstance(node, list) and lists:
        for i, item in enumerate(node):
            yield from walk(item, f"{prefix}[{i}]")
    else:
        yield prefix, node


@functools.cache
def schema_types() -> dict[str, Any]:
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


def schema_keys() -> list[str]:
    return list(schema_types())


def expected(key: str) -> str:
    """What a key takes, in words, from its type in the schema."""
    hint = schema_types()[key]
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


def refuse_unknown_keys(job: DictConfig) -> None:
    """`+newkey=1` slips past the schema's struct flag; name it here."""
    known = set(schema_keys())
    for key, value in walk(job):
        base = key.split("[")[0]
        if base not in known:
            raise ConfigError(base, value, known_keys_hint(base))


def known_keys_hint(key: str) -> str:
    close = difflib.get_close_matches(key, schema_keys(), n=1)
    return f"an existing key (did you mean {close[0]}?)" if close else "an existing key"


def compose_defaults() -> dict[str, Any]:
    """Every setting of the default config: {"lr": 0.05, "model.bias": True, ...}."""
    cfg = compose_checked([], {})
    with open_dict(cfg):
        del cfg["hydra"]
    return dict(walk(cfg, lists=False))
