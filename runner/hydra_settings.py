"""What a user may tell Hydra: a small typed allow-list, and nothing else under `hydra.*`.

Hydra's logging, the jobs' environment, callbacks, the output layout and each launcher's
set-up are the runner's own (conf/hydra/ and its plugins). A command line, a `--config-dir`
preset or a search space may choose only the launchers and sweepers below and set only the
keys below, each checked by type and range.

The rule is enforced on the outcome, not on the doors: `foreign(cfg)` compares the composed
`hydra` node with the runner's own for the same launcher and sweeper, leaf by leaf, and any
difference outside this allow-list is refused, whether it came from the command line, a
preset, a swept option or `hydra.sweeper.params`. A new way into Hydra cannot slip past a
list of forbidden things, because there is none. Nothing here imports torch or MLflow.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.resolvers import oc

# The launchers and sweepers a user may choose (hydra/launcher=..., hydra/sweeper=...).
LAUNCHERS = ("basic", "batched", "joblib", "ray", "submitit_local", "submitit_slurm")
SWEEPERS = ("grid", "optuna")
GROUPS = {"hydra/launcher": LAUNCHERS, "hydra/sweeper": SWEEPERS}
# The runner's own logging presets: not a user's choice.
FIXED_GROUPS = {"hydra/job_logging": "runner", "hydra/hydra_logging": "runner"}
# Hydra's bookkeeping of a composition (what was overridden, where it ran): not settings.
BOOKKEEPING = ("hydra.overrides", "hydra.runtime", "hydra.job.override_dirname",
               "hydra.searchpath")  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """One key a user may set: its check, the words for what it takes, and what it does."""

    ok: Callable[[Any], bool]
    allowed: str
    help: str


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _int(v) and v >= low


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _line(v: Any) -> bool:
    """One line of text (submitit writes these into a batch script: a newline would be code)."""
    return isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable()


def _word(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[\w.,:+@%&|\[\]-]{1,200}", v) is not None


def _path(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 4096 and v.isprintable()


INT1 = "an integer >= 1"
LINE = "one line of printable text, at most 200 characters"
WORD = "a name (letters, digits, . , : + @ % & | [ ] -; no spaces)"

SETTINGS: dict[str, Setting] = {
    # Where a run or a sweep writes (the gate then checks and reserves the directory).
    "hydra.run.dir": Setting(_path, "a directory path", "a single run's directory"),
    "hydra.sweep.dir": Setting(_path, "a directory path", "a sweep's directory"),
    # hydra/launcher=batched: jobs trained together
    "hydra.launcher.max_batch": Setting(_at_least(1), INT1, "most jobs trained as one program"),
    # hydra/launcher=joblib
    "hydra.launcher.n_jobs": Setting(
        lambda v: _int(v) and (v >= 1 or v == -1),
        "-1 (one per core) or an integer >= 1",
        "joblib: jobs run at once",
    ),
    "hydra.launcher.prefer": Setting(
        lambda v: v in ("processes", "threads"), "processes or threads", "joblib: workers"
    ),
    "hydra.launcher.timeout": Setting(
        _optional(lambda v: _number(v) and v > 0), "null or a number > 0", "joblib: seconds"
    ),
    "hydra.launcher.verbose": Setting(_at_least(0), "an integer >= 0", "joblib: its messages"),
    "hydra.launcher.pre_dispatch": Setting(
        lambda v: (
            (_int(v) and v >= 1)
            or (isinstance(v, str) and re.fullmatch(r"all|(\d+\*)?n_jobs", v) is not None)
        ),
        "an integer >= 1, n_jobs, K*n_jobs or all",
        "joblib: jobs dispatched ahead",
    ),
    "hydra.launcher.batch_size": Setting(
        lambda v: v == "auto" or (_int(v) and v >= 1),
        "auto or an integer >= 1",
        "joblib: jobs per dispatch",
    ),
    # hydra/launcher=submitit_local, submitit_slurm
    "hydra.launcher.timeout_min": Setting(_at_least(1), INT1, "submitit: minutes a job may run"),
    "hydra.launcher.cpus_per_task": Setting(_at_least(1), INT1, "submitit: cores per job"),
    "hydra.launcher.gpus_per_node": Setting(_at_least(0), "an integer >= 0", "submitit: GPUs"),
    "hydra.launcher.tasks_per_node": Setting(_at_least(1), INT1, "submitit: tasks per node"),
    "hydra.launcher.mem_gb": Setting(_at_least(1), INT1, "submitit: memory per job"),
    "hydra.launcher.nodes": Setting(_at_least(1), INT1, "submitit: nodes per job"),
    "hydra.launcher.array_parallelism": Setting(_at_least(1), INT1, "submitit: jobs at once"),
    "hydra.launcher.name": Setting(_word, WORD, "submitit: the jobs' name"),
    "hydra.launcher.partition": Setting(_optional(_word), WORD, "Slurm: partition"),
    "hydra.launcher.account": Setting(_optional(_word), WORD, "Slurm: account"),
    "hydra.launcher.qos": Setting(_optional(_word), WORD, "Slurm: quality of service"),
    "hydra.launcher.constraint": Setting(_optional(_word), WORD, "Slurm: node features"),
    "hydra.launcher.exclude": Setting(_optional(_word), WORD, "Slurm: nodes left out"),
    "hydra.launcher.comment": Setting(_optional(_line), LINE, "Slurm: a comment"),
    # hydra/launcher=ray
    "hydra.launcher.ray.init.address": Setting(
        _optional(_word), "null or host:port of a Ray head", "Ray: the cluster"
    ),
    "hydra.launcher.ray.remote.num_cpus": Setting(
        lambda v: _number(v) and v > 0, "a number > 0", "Ray: cores per job"
    ),
    "hydra.launcher.ray.remote.num_gpus": Setting(
        lambda v: _number(v) and v >= 0, "a number >= 0", "Ray: GPUs per job"
    ),
    # hydra/sweeper=grid
    "hydra.sweeper.max_batch_size": Setting(
        _optional(_at_least(1)), "null or an integer >= 1", "grid: jobs handed over at once"
    ),
    # hydra/sweeper=optuna (search=optuna)
    "hydra.sweeper.n_trials": Setting(_at_least(1), INT1, "search: trials this run adds"),
    "hydra.sweeper.n_jobs": Setting(_at_least(1), INT1, "search: trials per round"),
    "hydra.sweeper.report_every": Setting(
        _optional(_at_least(1)), "null or an integer >= 1", "search: epochs between reports"
    ),
    "hydra.sweeper.study_name": Setting(_optional(_line), LINE, "search: the study's name"),
    "hydra.sweeper.storage": Setting(
        _optional(_path), "null, a database URL or journal:PATH", "search: where the study is"
    ),
}


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, str)) or _number(v)


# Sections whose keys are names, not code: a sampler's or pruner's name and keyword
# arguments (Optuna checks them by building it), and a search space (key -> sweep, each
# checked by the gate as if typed on the command line).
SECTIONS: dict[str, Setting] = {
    "hydra.sweeper.sampler": Setting(_scalar, "a number, a string or null", "search: sampler"),
    "hydra.sweeper.pruner": Setting(_scalar, "a number, a string or null", "search: pruner"),
    "hydra.sweeper.params": Setting(
        lambda v: isinstance(v, (str, int, float, bool)),
        "a sweep, as on the command line",
        "the search space or grid, key -> sweep",
    ),
}


def setting(key: str) -> Setting | None:
    """The allow-list's entry for a dotted `hydra.` key, or None: not the user's to set."""
    if key in SETTINGS:
        return SETTINGS[key]
    for section, entry in SECTIONS.items():
        if key == section:
            return entry
        if key.startswith(section + "."):  # an argument's name: never _target_ and the like
            return None if key.rpartition(".")[2].startswith("_") else entry
    return None


def foreign(cfg: DictConfig, reference: DictConfig) -> Iterator[tuple[str, Any, str]]:
    """(key, value, what is allowed) for each leaf of cfg's `hydra` node that differs from
    the runner's own (`reference`, composed for the same launcher and sweeper) and is not
    the user's to set, or holds a value the allow-list refuses."""
    mine, theirs = _leaves(reference.hydra), _leaves(cfg.hydra)
    missing = object()
    for key in sorted(set(mine) | set(theirs), key=str):
        if key.startswith(BOOKKEEPING):
            continue
        before, after = mine.get(key, missing), theirs.get(key, missing)
        if before == after or key in SECTIONS:  # (a section's entries are checked one by one)
            continue
        if after is missing and any(k.startswith((key + ".", key + "[")) for k in theirs):
            continue  # an empty section that now has entries: they are named one by one
        entry = setting(key)
        if entry is None or after is missing:
            shown = None if after is missing else after
            yield key, shown, "the runner's own (not settable: see python -m runner --help)"
            continue
        try:
            value = _resolved(cfg, key, after)
        except Exception as err:  # e.g. ${oc.env:SECRET}
            yield key, after, f"a value that resolves ({str(err).splitlines()[0]})"
            continue
        if not entry.ok(value):
            yield key, value, entry.allowed


def _resolved(cfg: DictConfig, key: str, raw: Any) -> Any:
    """A leaf's value as Hydra will use it (an interpolation resolved), else as written."""
    if not (isinstance(raw, str) and "${" in raw):
        return raw
    return OmegaConf.select(cfg, key, throw_on_missing=True)


# The environment variables a config may read with ${oc.env:NAME}: the runner's own. Any
# other is refused, so that no value, message, name or tag can carry a secret from the
# environment (`mlflow.experiment=${oc.env:MLFLOW_TRACKING_PASSWORD}`).
READABLE_ENV = ("RAY_ADDRESS",)


def _env(key: str, *default: Any) -> str | None:
    if key not in READABLE_ENV:
        raise ValueError(f"oc.env reads only {', '.join(READABLE_ENV)}, not {key}")
    return oc.env(key, *default)  # OmegaConf's own, for the variables it may read


def guard_environment() -> None:
    """Put the runner's oc.env in the place of OmegaConf's, for this process."""
    OmegaConf.register_new_resolver("oc.env", _env, replace=True)


def _leaves(node: Any, prefix: str = "hydra") -> dict[str, Any]:
    """{dotted key: leaf} of a config node, interpolations as written; a list is walked."""
    container = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    return dict(_walk(container, prefix))


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        if not node and prefix:
            yield prefix, {}  # an empty section is a value too (e.g. `env_set: {}`)
        for key, child in node.items():
            yield from _walk(child, f"{prefix}.{key}")
    elif isinstance(node, list):
        if not node:
            yield prefix, []
        for i, item in enumerate(node):
            yield from _walk(item, f"{prefix}[{i}]")
    else:
        yield prefix, node


@functools.cache
def help_lines() -> tuple[str, ...]:
    """The allow-list as `python -m runner --help` prints it."""
    return tuple(f"  {key}: {s.allowed} ({s.help})" for key, s in SETTINGS.items())
