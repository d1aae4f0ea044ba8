"""The runner's grid sweeper: every combination of the command line's lists and ranges.

Hydra's basic sweeper composes every job's config once to see that it composes, and its
launcher then composes it again to run it: about 0.2 s each time on our 2-core machines.
`python -m runner -m` has checked every swept value before Hydra started (runner/gate.py),
so this sweeper hands the jobs straight to the launcher. Built on Hydra's public Sweeper
API; Hydra finds it because it lives in the `hydra_plugins` namespace. A float range is
computed in decimal (runner/ranges.py): range(0.01,0.05,0.01) is four jobs, not five.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from runner import signals
from runner.ranges import float_range


class LaunchingSweeper(Sweeper):
    """A sweeper that hands its jobs to the configured launcher (the runner's sweepers)."""

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        # Jobs in worker processes of this machine (joblib): a stop is passed on to them.
        self.workers = str(config.hydra.launcher.get("_target_", "")).endswith("JoblibLauncher")

    def launch(self, jobs: list[list[str]], first: int) -> Sequence[JobReturn]:
        """Hand jobs to the launcher. Workers are waited on through a stop: told of it, they
        end their runs KILLED with every row stored and start no more jobs (an exception here
        would make joblib kill them midway through a chunk), then the sweep stops."""
        if not self.workers:  # the jobs run in this process, whose training loop listens
            return self.launcher.launch(jobs, initial_job_idx=first)
        stopper = signals.STOPPER
        stopper.forward = signals.to_workers
        what = "its running jobs end KILLED, MLflow holding every epoch of their CSVs"
        try:
            with stopper.listening_while(what):
                results = self.launcher.launch(UntilStopped(jobs), initial_job_idx=first)
        finally:
            stopper.forward = None
        if stopper.stop.is_set():
            raise signals.Stop(stopper.signum)
        return results


class GridSweeper(LaunchingSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None) -> None:
        self.max_batch_size = max_batch_size  # jobs handed to the launcher at once; null: all
        self.params = params or {}  # key -> sweep, as on the command line (hydra.sweeper.params)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        jobs = grid([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        size = self.max_batch_size or len(jobs) or 1
        returns = []
        for first in range(0, len(jobs), size):
            results = self.launch(jobs[first : first + size], first)
            for r in results:
                _ = r.return_value  # a job that raised raises here, as in Hydra's sweepers
            returns.append(kept(results, len(jobs)))
        return returns


class UntilStopped(list):
    """A batch's jobs, as a launcher iterates them to hand them out: none after a stop, so
    the workers' queue ends there and a stopped sweep of 10,000 jobs does not start each."""

    def __iter__(self) -> Iterator[list[str]]:
        for job in super().__iter__():
            if signals.STOPPER.stop.is_set():
                return
            yield job


# Up to this many jobs, a sweep's returns keep their configs, as Hydra's sweepers give them;
# a longer sweep keeps them without, so that a sweep of 10,000 jobs holds about a batch of
# configs at a time.
KEEP_CONFIGS = 1_000


def kept(results: Sequence[JobReturn], jobs: int) -> list[JobReturn]:
    """A batch's returns, as kept by a sweep of `jobs` jobs."""
    if jobs <= KEEP_CONFIGS:
        return list(results)
    return [JobReturn(overrides=r.overrides, working_dir=r.working_dir, task_name=r.task_name,
                      status=r.status, _return_value=r._return_value)
            for r in results]  # fmt: skip


def grid(arguments: list[str]) -> list[list[str]]:
    """Every combination of the swept values, in command-line order (the last varies fastest)."""
    choices: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(arguments):
        key = o.get_key_element()
        if o.is_sweep_override():
            values = float_range(o) or list(o.sweep_string_iterator())
            choices[key] = [f"{key}={value}" for value in values]
        else:
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]
