"""The batched launcher (`hydra/launcher=batched`, the runner's default for -m): the jobs
of a sweep trained together, each still a whole job.

Hydra's basic launcher composes every job's config from the YAML files again (about 0.2 s
a job on our 2-core machines) and then runs the task function once per job. This one
composes once per set of config-group choices and derives each job's config from that by
applying its `key=value` settings, as Hydra's own composition does last; it gives every
job its directory, its `.hydra/` files and its JobReturn, as Hydra's launchers do.

Then, if the task function offers `run_together` (the runner's does: runner/batch.py), it
gets all the jobs at once and trains those that can share one tensor program as one
batch. Any other task function runs job by job, as under the basic launcher.
"""

import copy
import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import Container, DictConfig, OmegaConf, open_dict, read_write
from omegaconf._utils import OmegaConfDumper

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.runner_batched.BatchedLauncher"
    # jobs handed to the task function at once: bounds memory and open files in a long sweep
    max_batch: int = 256


ConfigStore.instance().store(
    group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="runner"
)


@dataclass
class Job:
    """One job, ready to run: its configs, as Hydra's run_job would hand them over."""

    idx: int
    overrides: list[str]
    config: DictConfig  # with its hydra node; hydra.runtime.output_dir set
    task: DictConfig  # without it: what the task function gets

    @property
    def output_dir(self) -> Path:
        return Path(self.config.hydra.runtime.output_dir)


class BatchedLauncher(Launcher):
    def __init__(self, max_batch: int = 256) -> None:
        super().__init__()
        self.max_batch = max(1, max_batch)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        # By group choices and settings' keys: the composed config, and it without Hydra's
        # node, pickled
        self.composed: dict[tuple, tuple[bytes, bytes]] = {}
        self.parser = OverridesParser.create()  # (making one registers the sweep functions)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        together = getattr(self.task_function, "run_together", None)
        how = "trained together where they can be" if together else "one at a time"
        log.info(f"Launching {len(job_overrides)} jobs locally, {how}")
        returns: list[JobReturn] = []
        for first in range(0, len(job_overrides), self.max_batch):
            batch = job_overrides[first : first + self.max_batch]
            jobs = [self._job(initial_job_idx + first + k, list(o)) for k, o in enumerate(batch)]
            if together is None:
                returns += [self._run_alone(job) for job in jobs]
            else:
                returns += self._run_together(together, jobs)
        return returns

    def _job(self, idx: int, overrides: list[str]) -> Job:
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        config, task = self._compose(overrides)
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        output_dir = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        return Job(idx, overrides, config, task)

    def _compose(self, overrides: list[str]) -> tuple[DictConfig, DictConfig]:
        """The job's config, and it without Hydra's node (the task's, as Hydra's run_job
        makes it): composed by Hydra once per set of group choices and settings' keys, then
        derived by setting this job's values (what Hydra's composition does last, after the
        defaults list, with `OmegaConf.update`). The task is derived from a copy of its own
        that has no Hydra node: copying that node is most of the cost of a job's config."""
        parsed = self.parser.parse_overrides(overrides)
        values = [o for o in parsed if _is_plain_value(o, self._groups())]
        structure = tuple(o.input_line for o in parsed if o not in values)
        key = (structure, tuple(o.key_or_group for o in values))
        if key not in self.composed:
            loader = self.hydra_context.config_loader
            composed = loader.load_sweep_config(self.config, overrides)
            # Pickled once, unpickled per job: a copy in a third of deepcopy's time (Hydra's
            # own launchers pickle configs to their workers, so OmegaConf keeps it exact).
            task = _without_hydra(composed)
            self.composed[key] = (pickle.dumps(composed), pickle.dumps(task))
            return composed, task  # its values are set
        config, task = (pickle.loads(blob) for blob in self.composed[key])
        for o in values:
            OmegaConf.update(config, o.key_or_group, o.value(), merge=True)
            OmegaConf.update(task, o.key_or_group, o.value(), merge=True)
        naming = config.hydra.job.config.override_dirname
        with open_dict(config.hydra):
            given = [o for o in parsed if not o.is_hydra_override()]
            config.hydra.overrides.task = [o.input_line for o in given]
            config.hydra.job.override_dirname = get_overrides_dirname(
                overrides=given, exclude_keys=list(naming.exclude_keys),
                item_sep=naming.item_sep, kv_sep=naming.kv_sep,
            )  # fmt: skip
        return config, task

    def _groups(self) -> set[str]:
        if not hasattr(self, "groups"):
            self.groups = _all_groups(self.hydra_context.config_loader)
        return self.groups

    def _run_alone(self, job: Job) -> JobReturn:
        """A job of a task function that cannot train jobs together: as the basic launcher."""
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                      config=job.config, job_dir_key="hydra.sweep.dir",
                      job_subdir_key="hydra.sweep.subdir")  # fmt: skip
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _run_together(self, together: Any, jobs: list[Job]) -> list[JobReturn]:
        """Every job's directory and .hydra files first, then one call for all of them."""
        callbacks = self.hydra_context.callbacks
        returns = []
        for job in jobs:
            job.output_dir.mkdir(parents=True, exist_ok=True)
            if job.config.hydra.output_subdir is not None:
                _save_configs(job, job.output_dir / str(job.config.hydra.output_subdir))
            callbacks.on_job_start(config=job.config, task_function=self.task_function)
        values = together([(job.task, job.config.hydra) for job in jobs])
        for job, value in zip(jobs, values, strict=True):
            failed = isinstance(value, Exception)
            ret = JobReturn(overrides=job.overrides, cfg=job.task, hydra_cfg=job.config,
                            working_dir=os.getcwd(), task_name=job.config.hydra.job.name,
                            status=JobStatus.FAILED if failed else JobStatus.COMPLETED,
                            _return_value=value)  # fmt: skip
            callbacks.on_job_end(config=job.config, job_return=ret)
            returns.append(ret)
        return returns


def _is_plain_value(o: Override, groups: set[str]) -> bool:
    """`key=value` of a setting: not a group choice, an addition, a deletion or Hydra's."""
    return (
        o.type == OverrideType.CHANGE
        and not o.is_hydra_override()
        and o.key_or_group not in groups
        and o.package is None
    )


def _without_hydra(config: DictConfig) -> DictConfig:
    """A copy of `config` without its Hydra node, as Hydra's run_job makes the task's."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _all_groups(loader: Any, parent: str = "") -> set[str]:
    groups = set()
    for name in loader.list_groups(parent):
        path = f"{parent}/{name}" if parent else name
        groups |= {path, *_all_groups(loader, path)}
    return groups


def _save_configs(job: Job, directory: Path) -> None:
    """config.yaml, hydra.yaml and overrides.yaml, as Hydra's run_job writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    texts = {
        "config.yaml": to_yaml(job.task),
        "hydra.yaml": to_yaml(job.config, "hydra"),
        "overrides.yaml": to_yaml(job.config.hydra.overrides.task),
    }
    for name, text in texts.items():
        (directory / name).write_text(text, encoding="utf-8")


class _Dumper(yaml.CSafeDumper):
    """libyaml's writer, with OmegaConf's way of writing a string: quoted where it would
    read back as a bool or a number."""


_Dumper.add_representer(str, OmegaConfDumper.str_representer)


def to_yaml(config: Container, node: str | None = None) -> str:
    """The text OmegaConf.to_yaml gives `config` (or {node: config[node]}), written by
    libyaml: about three times as fast (tests/test_batched_launcher.py compares the two)."""
    plain = OmegaConf.to_container(config[node] if node else config, resolve=False,
                                   enum_to_str=True)  # fmt: skip
    return yaml.dump({node: plain} if node else plain, Dumper=_Dumper, default_flow_style=False,
                     allow_unicode=True, sort_keys=False)  # fmt: skip
