"""An Optuna search's study: where it is stored, what it samples, and what a trial reports.

Shared by the sweeper (hydra_plugins/runner_optuna, in the command's own process) and the
trials (the jobs, wherever the launcher runs them). The study lives in a database - by
default optuna.db beside the MLflow store - so a search can be stopped, resumed, grown and
shared: the sweeper asks Optuna for trials and tells it how they ended (Optuna's
ask-and-tell API), and each trial, while it trains, reports its loss to the same study
and asks Optuna's pruner whether to go on.

Samplers and pruners come from small registries by name, never from a `_target_`.
Optuna itself is imported only where a study is opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from runner.processes import is_orphaned, process_tags
from runner.ranges import float_range
from runner.store import sqlite_path

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("runner")

# The study and how trials report, from the sweeper to every trial (hydra.job.env_copy).
STUDY_VARIABLE = "RUNNER_STUDY"
STUDY_FILE = "optuna.db"
JOURNAL = "journal:"  # hydra.sweeper.storage=journal:PATH, Optuna's file journal
NAME_MAX = 400  # characters of a study name made from a command line

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler"}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
    "wilcoxon": "WilcoxonPruner",
    "nop": "NopPruner",
}
# Settings that change how a search is shown or logged, not what its trials compute: the
# same command with other values of these continues the same study.
NOT_THE_STUDY = ("hydra", "mlflow.", "progress=", "print_every=", "plots=", "sweep.", "chunk=")


@dataclass(frozen=True)
class Study:
    """Where a search's study is, and how its trials report to it."""

    storage: str  # an SQLAlchemy URL (sqlite:///...), or journal:PATH
    name: str
    # Epochs between a trial's reports, the same for every trial of the study, so that the
    # pruner compares them at the same epochs. None: a tenth of each trial's epochs.
    report_every: int | None = None
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})

    @property
    def key(self) -> str:
        """A short fixed-width key of the study: the tag that finds its MLflow parent run."""
        return hashlib.sha1(f"{self.storage}\n{self.name}".encode()).hexdigest()[:16]

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Study | None:
        text = os.environ.get(STUDY_VARIABLE)
        return cls(**json.loads(text)) if text else None


@dataclass(frozen=True)
class Pruned:
    """What a pruned trial returns to the sweeper, instead of its final loss."""

    at_epoch: int | None  # None: before its first epoch
    by: str  # "pruner", or "stability": lr at or above 2/λmax, pruned before training


def locate(
    sweeper: Any,
    overrides: Iterable[str],
    launch_dir: Path,
    tracking_uri: str | None,
    epochs: int | None = None,
) -> Study:
    """The study of a search: `hydra.sweeper.storage` or optuna.db beside the MLflow store,
    named `hydra.sweeper.study_name` or after the command line (order-free, without the
    settings that do not change the trials: NOT_THE_STUDY); its trials report every
    `hydra.sweeper.report_every` epochs, or every tenth of the base config's `epochs`."""
    storage = sweeper.get("storage")
    if storage is None:
        store = sqlite_path(tracking_uri) if tracking_uri else None
        directory = store.parent if store is not None else launch_dir
        storage = f"sqlite:///{(directory / STUDY_FILE).resolve()}"
    storage = _absolute(str(storage), launch_dir)  # every trial, wherever it runs, finds it
    name = sweeper.get("study_name") or study_name(overrides)
    pruner = dict(sweeper.get("pruner") or {"name": "median"})
    every = sweeper.get("report_every") or (max(1, epochs // 10) if epochs else None)
    return Study(str(storage), str(name), every, pruner)


def _absolute(storage: str, launch_dir: Path) -> str:
    """A relative SQLite or journal path as an absolute one, from the launch directory."""
    for prefix in ("sqlite:///", JOURNAL):
        if storage.startswith(prefix):
            path = Path(storage.removeprefix(prefix))
            return f"{prefix}{(launch_dir / path).resolve()}"  # (an absolute path stays)
    return storage


def study_record(study: Study) -> tuple[dict[str, str], dict[str, float]]:
    """The whole study, for its MLflow parent run: tags (trials by state, the best trial,
    its params and its MLflow run) and the best value as metric best_final_loss."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=study.name, storage=open_storage(study.storage))
    trials = loaded.get_trials(deepcopy=False)
    tags = {"optuna.trials": str(len(trials))}
    for state in {t.state for t in trials}:
        tags[f"optuna.trials.{state.name.lower()}"] = str(sum(t.state == state for t in trials))
    if not any(t.state.name == "COMPLETE" for t in trials):
        return tags, {}
    best = loaded.best_trial
    tags |= {"optuna.best_trial": str(best.number), "optuna.best_params": json.dumps(best.params)}
    if "mlflow_run_id" in best.user_attrs:
        tags["best_run_id"] = str(best.user_attrs["mlflow_run_id"])
    return tags, {"best_final_loss": float(best.value)}


def study_name(overrides: Iterable[str]) -> str:
    last = {o.lstrip("+~").split("=", 1)[0]: o for o in overrides}  # the command line's wins
    kept = sorted(o for o in last.values() if not o.lstrip("+~").startswith(NOT_THE_STUDY))
    name = " ".join(kept) or "defaults"
    if len(name) > NAME_MAX:  # Optuna keeps 512 characters
        name = f"{name[: NAME_MAX - 20]} #{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's storage of `url`: a database, or the journal file of journal:PATH."""
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL)))
    # The trials of a parallel search write to one SQLite file: wait for its lock.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def sampler(settings: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """hydra.sweeper.sampler: {name: tpe|random|qmc, seed, and the sampler's own arguments}."""
    import optuna.samplers

    return _built(optuna.samplers, SAMPLERS, settings, "hydra.sweeper.sampler")


def pruner(settings: dict[str, Any]) -> optuna.pruners.BasePruner:
    """hydra.sweeper.pruner: {name: median|percentile|..., and the pruner's own arguments}."""
    import optuna.pruners

    return _built(optuna.pruners, PRUNERS, settings, "hydra.sweeper.pruner")


def _built(module: Any, registry: dict[str, str], settings: dict[str, Any], key: str) -> Any:
    from runner.config import ConfigError

    arguments = {k: v for k, v in settings.items() if k != "name"}
    name = settings.get("name")
    if name not in registry:
        raise ConfigError(f"{key}.name", name, "one of " + ", ".join(registry))
    built = getattr(module, registry[name])
    for arg, value in arguments.items():  # Optuna takes any type here and fails mid-search
        if problem := _argument_problem(built, arg, value):
            raise ConfigError(f"{key}.{arg}", value, f"{problem} ({registry[name]})")
    if isinstance(arguments.get("seed"), int):  # numpy's generators take [0, 2**32)
        arguments["seed"] %= 2**32
    try:
        return built(**arguments)
    except (TypeError, ValueError) as err:
        raise ConfigError(key, settings, f"arguments {registry[name]} takes ({err})") from None


def _argument_problem(built: Any, arg: str, value: Any) -> str | None:
    """Whether `value` has the type of the argument's default (an int for an int, ...)."""
    import inspect

    parameter = inspect.signature(built).parameters.get(arg)
    if parameter is None:
        return None  # Optuna's own error names it
    default = parameter.default
    if arg == "seed" or (isinstance(default, int) and not isinstance(default, bool)):
        ok, words = isinstance(value, int) and not isinstance(value, bool), "an integer"
        ok = ok or (arg == "seed" and value is None)
    elif isinstance(default, bool):
        ok, words = isinstance(value, bool), "true or false"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        words = "a number"
    else:
        return None
    if ok and not isinstance(value, bool) and isinstance(value, (int, float)) and value < 0:
        return "a number >= 0"
    return None if ok else words


# --- the search space, from the command line ----------------------------------------------


def search_space(arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The swept keys as Optuna distributions, and the fixed overrides as they are:
    `tag(log, interval(a, b))` and `interval(a, b)` sample a float (an int under int()),
    `choice(...)` and comma lists pick one (group options too), `range(...)` picks one of
    its values, a float range in decimal (runner/ranges.py)."""
    distributions, fixed = {}, []
    for o in OverridesParser.create().parse_overrides(arguments):
        if o.is_sweep_override():
            distributions[o.get_key_element()] = distribution(o)
        else:
            fixed.append(o.input_line)
    return distributions, fixed


def distribution(o: Override) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution as Categorical
    from optuna.distributions import FloatDistribution, IntDistribution

    sweep = o.value()
    if isinstance(sweep, IntervalSweep):
        log = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    if isinstance(sweep, RangeSweep) and not sweep.shuffle:
        texts = float_range(o)
        if texts:  # exactly the decimal values (Optuna's float steps accumulate)
            return Categorical([float(t) for t in texts])
        values = sorted(o.sweep_iterator())  # (a descending range: the same values)
        if len(values) > 1:
            return IntDistribution(values[0], values[-1], step=values[1] - values[0])
        return Categorical(values)
    assert isinstance(sweep, ChoiceSweep | RangeSweep)
    return Categorical(list(o.sweep_iterator()))


def override(key: str, value: Any) -> str:
    """`key=value` for a sampled value, as Hydra's grammar reads it back."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return f"{key}={text}"


# --- the study, from the sweeper's side ------------------------------------------------------


def mark_running(trial: optuna.trial.Trial) -> None:
    """Record which process runs the trial, so the next search can tell it is stale."""
    for key, value in process_tags().items():
        trial.set_user_attr(key, value)


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose search process is gone (killed, even by SIGKILL): a
    search on another host, or one still alive, keeps its trials. Returns their numbers."""
    from optuna.trial import TrialState

    stale = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if is_orphaned({k: str(v) for k, v in t.user_attrs.items()})
    ]
    for number in stale:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return stale


# --- a trial's reports, from the job's side ---------------------------------------------------


class Reporter:
    """A trial's link to its study: reports its loss every `every` epochs, and says whether
    the pruner stops it there. A study that cannot be reached costs the trial its pruning,
    never its training: one warning, and it trains to its end."""

    def __init__(self, study: Study, number: int, every: int, run_id: str | None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.every, self.trial = every, None
        try:
            storage = open_storage(study.storage)
            # (the sweeper samples; this side only reports: the cheapest sampler)
            loaded = optuna.load_study(study_name=study.name, storage=storage,
                                       sampler=optuna.samplers.RandomSampler(),
                                       pruner=pruner(study.pruner))  # fmt: skip
            study_id = storage.get_study_id_from_name(study.name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            # The trial the sweeper asked for, by its id: Optuna's own way to report from
            # another process (it documents the constructor as not for direct use).
            self.trial = optuna.trial.Trial(loaded, trial_id)
            if run_id is not None:
                self.trial.set_user_attr("mlflow_run_id", run_id)  # the study's best: its run
        except Exception as err:
            self._give_up(err)

    def __call__(self, epoch: int, loss: float) -> bool:
        """At each `every`-th epoch, report its loss; True: the pruner stops the trial here."""
        if self.trial is None or (epoch + 1) % self.every:
            return False
        try:
            self.trial.report(loss, epoch)
            return self.trial.should_prune()
        except Exception as err:
            self._give_up(err)
            return False

    def _give_up(self, err: Exception) -> None:
        why = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        log.warning(f"runner: warning: this trial reports to its study no more and will not be"
                    f" pruned ({type(err).__name__}: {why})")  # fmt: skip
        self.trial = None


def reporting(study: Study, epochs: int, chunk: int) -> tuple[int, int]:
    """(report every N epochs, epochs per chunk): the study's interval, and the largest
    chunk up to the configured one that ends at each report (a report costs no extra host
    sync)."""
    every = study.report_every or max(1, epochs // 10)
    return every, next(d for d in range(min(every, chunk), 0, -1) if every % d == 0)
