"""Jobs of a sweep trained together: one tensor program for every group of jobs that
compute the same shape of thing, each job still a whole run (runner/run.py:run_batch).

Jobs are grouped by everything that decides the computation: the data, the model's kind,
the loss, the optimizer's kind, the device and the run's surroundings. Inside a group
they may differ in MEMBER_SETTINGS: each member has its own parameters, its own optimizer
and its own end. Whatever cannot be batched exactly trains as a batch of one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from runner.config import Config, DataKind, plain
from runner.data import GRAIN_SIZE, load_arrays
from runner.run import Result, RunContext, run_batch

# The settings in which the members of one batch may differ.
MEMBER_SETTINGS = {
    "lr", "seed", "epochs", "zero_grad", "check_grad", "check_grad_tol", "stop.tol",
    "model.init", "model.a", "model.b", "model.w", "optimizer.momentum", "optimizer.nesterov",
    "optimizer.weight_decay", "optimizer.betas", "optimizer.eps", "mlflow.log_every",
    "schedule.name", "schedule.step_size", "schedule.gamma", "schedule.t_max", "schedule.eta_min",
    "stop.patience",
}  # fmt: skip

# Up to torch's grain size (32,768 elements), a reduction over one member's points runs on
# one thread in one order, whatever the batch: each member's sums are bit for bit those of
# a run alone. Beyond it, a run alone splits its sums across threads; so do not batch.
POINTS_MAX = GRAIN_SIZE


def run_jobs(confs: list[Config], ctxs: list[RunContext]) -> Iterator[list[tuple[int, Result]]]:
    """Train the jobs group by group; yield each group's (index, Result) once it ended."""
    for group in _groups(confs, ctxs[0].launch_dir):
        results = run_batch([confs[i] for i in group], [ctxs[i] for i in group])
        yield list(zip(group, results, strict=True))


def _groups(confs: list[Config], launch_dir: Path) -> list[list[int]]:
    """The jobs' indices, grouped; jobs that cannot share a batch stand alone."""
    groups: dict[str, list[int]] = {}
    for i, conf in enumerate(confs):
        key = _shape(conf) if _batchable(conf, launch_dir) else f"alone {i}"
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _shape(conf: Config) -> str:
    """Everything but the member settings, as one string."""
    values = plain(conf)
    for key in MEMBER_SETTINGS:
        section, _, name = key.rpartition(".")
        (values[section] if section else values).pop(name)
    if conf.data.seed is None and (conf.data.kind == DataKind.synthetic or conf.data.val_fraction):
        values["seed"] = conf.seed  # the run's seed draws the data or the validation split
    return json.dumps(values, sort_keys=True)


def _batchable(conf: Config, launch_dir: Path) -> bool:
    """On the CPU, with few enough points that each member's sums keep their order."""
    if conf.device != "cpu":
        return False
    if conf.data.kind == DataKind.synthetic:
        return (conf.data.n or 0) <= POINTS_MAX
    if conf.data.kind == DataKind.inline:
        return len(conf.data.x or []) <= POINTS_MAX
    return len(load_arrays(conf.data, conf.seed, launch_dir)[1]) <= POINTS_MAX
