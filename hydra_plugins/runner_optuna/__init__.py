"""The runner's Optuna sweeper (`hydra/sweeper=optuna`, preset `search=optuna`): Optuna 5
through its ask-and-tell API, with a stored study that a search resumes and grows.

Each round asks Optuna for `n_jobs` trials, hands them to the launcher as one batch (the
batched launcher trains those that can share a tensor program together; joblib and Ray
run them side by side) and tells Optuna how each ended: its final loss, PRUNED (the
trial's own reports met the pruner, runner/search.py) or FAIL. A round ends when its
slowest trial does, so a pruned trial's slot waits at most for its batch.

Job numbers are trial numbers: a resumed search's jobs go on from the study's last trial.
The study (runner/search.py: `locate`) is named after the command line unless
`hydra.sweeper.study_name` is set, and stored in optuna.db beside the MLflow store unless
`hydra.sweeper.storage` is set; running the same command again continues it with
`n_trials` more trials, after failing the trials a killed search left RUNNING.
"""

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from hydra_plugins.runner_sweeper import LaunchingSweeper, kept
from runner import search
from runner.store import redact

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.runner_optuna.OptunaSweeper"
    n_trials: int = 20  # trials this run adds to the study
    n_jobs: int = 1  # trials asked, launched and trained together per round
    study_name: str | None = None  # null: named after the command line
    storage: str | None = None  # null: optuna.db beside the MLflow store; journal:PATH
    report_every: int | None = None  # epochs between reports; null: a tenth of `epochs`
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": None})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    params: dict[str, str] = field(default_factory=dict)  # key -> search space, as typed


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="runner"
)


class OptunaSweeper(LaunchingSweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = OptunaSweeperConf(**settings)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        s = self.settings
        params = [f"{k}={v}" for k, v in s.params.items()]
        space, fixed = search.search_space([*params, *arguments])  # (the command line's wins)
        place = self.study(arguments)
        study = self._open(place)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[Sequence[JobReturn]] = []
        with _environment(search.STUDY_VARIABLE, place.to_env()):  # each trial reports there
            for first in range(0, s.n_trials, s.n_jobs):
                trials = [_asked(study, space) for _ in range(min(s.n_jobs, s.n_trials - first))]
                returns.append(self._run(study, trials, fixed))
        _save_results(study, sweep_dir)
        return returns

    def study(self, arguments: list[str]) -> search.Study:
        """Where the study is: as the runner's command line found it (the study's MLflow
        parent run is opened by then), else - Hydra's own test apps - found the same way."""
        s = self.settings
        params = [f"{k}={v}" for k, v in s.params.items()]
        return search.Study.from_env() or search.locate(
            OmegaConf.structured(s), [*params, *arguments], Path(self.config.hydra.runtime.cwd),
            self._tracking_uri(), self.config.get("epochs"),
        )  # fmt: skip

    def _open(self, place: search.Study) -> Any:
        """The study, created or continued; its stale trials failed."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = self.settings
        storage = search.open_storage(place.storage)
        # The objective is the final loss: always minimized.
        created = optuna.create_study(study_name=place.name, storage=storage,
                                      direction="minimize", load_if_exists=True)  # fmt: skip
        before = len(created.trials)
        # A resumed search's random sampler draws on from where the last one stopped, not
        # again from the same seed (it would ask for the same trials); QMC's sequence goes on
        # by itself (it skips the trials the study has).
        sampler = dict(s.sampler)
        if sampler.get("seed") is not None and sampler["name"] in ("tpe", "random"):
            sampler["seed"] = int(sampler["seed"]) + before
        study = optuna.load_study(study_name=place.name, storage=storage,
                                  sampler=search.sampler(sampler),
                                  pruner=search.pruner(dict(s.pruner)))  # fmt: skip
        if stale := search.fail_stale(study):
            log.info(f"Failed trials {stale}: RUNNING when their search was killed")
        log.info(f"Study '{place.name}' in {redact(place.storage)}: {before} trials so far, "
                 f"{s.n_trials} more")  # fmt: skip
        return study

    def _run(self, study: Any, trials: list[Any], fixed: list[str]) -> list[JobReturn]:
        """One round: its trials launched (job number = trial number), then told."""
        from optuna.trial import TrialState

        results: list[JobReturn] = []
        try:
            for run in _consecutive(trials):
                jobs = [[*fixed, *(search.override(k, v) for k, v in t.params.items())]
                        for t in run]  # fmt: skip
                results += self.launch(jobs, run[0].number)
            errors = [_tell(study, t, r) for t, r in zip(trials, results, strict=True)]
        finally:  # a stopped search leaves no trial RUNNING
            for trial in trials:
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        for error in errors:  # every trial told first; then the search stops, as Hydra's do
            if error is not None:
                raise error
        return kept(results, self.settings.n_trials)

    def _tracking_uri(self) -> str | None:
        mlflow = self.config.get("mlflow")
        if mlflow is None or not mlflow.get("enabled", True):
            return None
        from runner.store import default_tracking_uri

        cwd = Path(self.config.hydra.runtime.cwd)
        return mlflow.get("tracking_uri") or default_tracking_uri(cwd)


def _asked(study: Any, space: dict[str, Any]) -> Any:
    """A new trial, marked at once with the process that runs it (runner/search.py)."""
    trial = study.ask(space)
    search.mark_running(trial)
    return trial


def _tell(study: Any, trial: Any, result: JobReturn) -> BaseException | None:
    """Tell Optuna how a trial ended; a trial whose job raised fails, and its error is
    returned."""
    from optuna.trial import TrialState

    try:
        value = result.return_value
    except BaseException as err:
        study.tell(trial, state=TrialState.FAIL)
        return err
    if isinstance(value, search.Pruned):
        study.tell(trial, state=TrialState.PRUNED)
    elif isinstance(value, int | float) and not math.isnan(value):
        study.tell(trial, float(value))
    else:
        log.warning(f"Trial {trial.number} returned {value!r}, not a number: FAIL")
        study.tell(trial, state=TrialState.FAIL)
    return None


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` while the block runs (launchers copy it to every job)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _consecutive(trials: list[Any]) -> list[list[Any]]:
    """The trials in runs of consecutive numbers (another search on the same study may
    take numbers in between): each run is one launch, its jobs numbered from its first."""
    runs: list[list[Any]] = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def _save_results(study: Any, sweep_dir: Path) -> None:
    """optimization_results.yaml, as Hydra's Optuna sweeper writes it: the study's best."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                               "trials": len(study.trials)}  # fmt: skip
    if done:
        best = study.best_trial
        results |= {"best_trial": best.number, "best_params": best.params,
                    "best_value": best.value}  # fmt: skip
        log.info(f"Best trial of {len(study.trials)}: #{best.number} {best.params}, "
                 f"value {best.value:.6g}")  # fmt: skip
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
