"""runner/search.py and the Optuna sweeper (hydra_plugins/runner_optuna): search spaces,
where a study lives, stale trials, the sweeper on Hydra's own test app, and whole searches
run with the real command (slow): resumed, grown, pruned, killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.test_utils.test_utils import TSweepRunner, verify_dir_outputs
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from support import all_runs, children, run_cli, runner_env, store, sweep_parent

from hydra_plugins.runner_optuna import OptunaSweeper
from runner import gate, search
from runner.config import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- search spaces: the cases of Hydra's Optuna sweeper's own tests, on Optuna 5 ----------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("key=choice(1,2)", CategoricalDistribution([1, 2])),
        ("key=choice(true, false)", CategoricalDistribution([True, False])),
        ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
        ("key=1,2,3", CategoricalDistribution([1, 2, 3])),
        ("optimizer=manual,sgd,adam", CategoricalDistribution(["manual", "sgd", "adam"])),
        ("key=shuffle(range(1,3))", CategoricalDistribution([1, 2])),
        ("key=range(1,3)", IntDistribution(1, 2)),  # the stop excluded, as Python's range
        ("key=range(0,10,5)", IntDistribution(0, 5, step=5)),
        ("key=interval(1, 5)", FloatDistribution(1, 5)),
        ("key=int(interval(1, 5))", IntDistribution(1, 5)),
        ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
        ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
        # a float range is its decimal values, exactly (runner/ranges.py)
        ("key=range(0.01,0.05,0.01)", CategoricalDistribution([0.01, 0.02, 0.03, 0.04])),
    ],
)
def test_a_sweep_becomes_its_optuna_distribution(line: str, expected: object) -> None:
    (override,) = OverridesParser.create().parse_overrides([line])
    actual = search.distribution(override)
    if isinstance(expected, CategoricalDistribution) and "shuffle" in line:
        assert set(actual.choices) == set(expected.choices)
    else:
        assert actual == expected


def test_search_space_splits_swept_from_fixed_keys() -> None:
    space, fixed = search.search_space(["key1=choice(1,2)", "key2=5", "+key3=range(1,3)"])
    assert space == {"key1": CategoricalDistribution([1, 2]), "+key3": IntDistribution(1, 2)}
    assert fixed == ["key2=5"]


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [("lr", 0.1, "lr=0.1"), ("lr", 0.012345678901234567, "lr=0.012345678901234567"),
     ("epochs", 40, "epochs=40"), ("check_grad", True, "check_grad=true"),
     ("optimizer", "sgd", "optimizer=sgd"), ("stop.tol", None, "stop.tol=null")],
)  # fmt: skip
def test_a_sampled_value_is_written_as_hydra_reads_it_back(
    key: str, value: object, line: str
) -> None:
    written = search.override(key, value)
    assert written == line
    (parsed,) = OverridesParser.create().parse_overrides([written])
    assert parsed.value() == value


# --- where a study lives, and its name -----------------------------------------------------


def test_a_study_is_stored_beside_the_mlflow_store_and_named_after_the_command(
    tmp_path: Path,
) -> None:
    sweeper = {"storage": None, "study_name": None, "report_every": None, "pruner": None}
    uri = f"sqlite:///{tmp_path / 'stores' / 'mlflow.db'}"
    study = search.locate(sweeper, ["lr=tag(log,interval(1e-3,1))", "search=optuna"],
                          tmp_path, uri)  # fmt: skip
    assert study.storage == f"sqlite:///{tmp_path / 'stores' / 'optuna.db'}"
    assert study.name == "lr=tag(log,interval(1e-3,1)) search=optuna"
    assert study.pruner == {"name": "median"}
    # the order, and settings that do not change what trials compute, leave it the same
    again = search.locate(sweeper, ["search=optuna", "progress=false", "mlflow.log_every=5",
                                    "lr=tag(log,interval(1e-3,1))"], tmp_path, uri)  # fmt: skip
    assert again == study and again.key == study.key
    # a server's store, or none: optuna.db in the launch directory
    served = search.locate(sweeper, ["lr=1,2"], tmp_path, "http://127.0.0.1:5000")
    assert served.storage == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_the_gate_finds_the_study_the_sweeper_would_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(search.STUDY_VARIABLE, raising=False)
    argv = ["search=optuna_lr", "optimizer=choice(sgd,adam)", "epochs=40",
            "hydra.sweeper.n_trials=3", "progress=false"]  # fmt: skip
    plan = gate.check(["-m", *argv], reserve=False)
    name = "epochs=40 lr=tag(log, interval(1e-4, 1.0)) optimizer=choice(sgd,adam) search=optuna_lr"
    assert plan.study == search.Study(f"sqlite:///{tmp_path / 'optuna.db'}", name, 4,
                                      {"name": "median"})  # fmt: skip
    cfg = gate.compose_checked([a for a in argv if "choice" not in a], {})
    settings = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    sweeper = OptunaSweeper(**{k: v for k, v in settings.items() if k != "_target_"})
    sweeper.config = cfg
    assert sweeper.study([a for a in argv if not a.startswith("hydra.")]) == plan.study


def test_given_names_and_storages_are_kept_and_relative_paths_made_absolute(
    tmp_path: Path,
) -> None:
    sweeper = {"storage": "sqlite:///studies/s.db", "study_name": "mine", "report_every": 5,
               "pruner": {"name": "hyperband"}}  # fmt: skip
    study = search.locate(sweeper, ["lr=1,2"], tmp_path, None)
    assert study == search.Study(f"sqlite:///{tmp_path / 'studies' / 's.db'}", "mine", 5,
                                 {"name": "hyperband"})  # fmt: skip
    journal = search.locate(sweeper | {"storage": "journal:s.log"}, [], tmp_path, None)
    assert journal.storage == f"journal:{tmp_path / 's.log'}"
    server = search.locate(sweeper | {"storage": "postgresql://db/optuna"}, [], tmp_path, None)
    assert server.storage == "postgresql://db/optuna"
    assert search.Study(**json.loads(study.to_env())) == study


def test_a_long_command_line_gives_a_name_optuna_can_keep() -> None:
    name = search.study_name([f"key{i}=choice(1,2,3)" for i in range(100)])
    assert len(name) <= search.NAME_MAX
    assert name != search.study_name([f"key{i}=choice(1,2,3)" for i in range(101)])


def test_samplers_and_pruners_come_by_name_with_their_arguments() -> None:
    assert isinstance(search.sampler({"name": "random", "seed": 3}), optuna.samplers.RandomSampler)
    built = search.pruner({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 4})
    assert isinstance(built, optuna.pruners.MedianPruner)
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.pruner\.name='os\.system'"):
        search.pruner({"name": "os.system"})
    with pytest.raises(ConfigError, match="unexpected keyword argument 'bogus'"):
        search.sampler({"name": "tpe", "bogus": 1})
    # Optuna would take these and fail mid-search: refused by the arguments' types
    with pytest.raises(ConfigError, match=r"n_startup_trials='abc' is not allowed: an integer"):
        search.sampler({"name": "tpe", "n_startup_trials": "abc"})
    with pytest.raises(ConfigError, match=r"n_warmup_steps=-3 is not allowed: a number >= 0"):
        search.pruner({"name": "median", "n_warmup_steps": -3})


def test_a_seed_beyond_numpy_s_range_is_folded_into_it() -> None:
    """seed=4294967295 resumed: the sweeper adds the trials so far to the seed; numpy's
    generators take [0, 2**32), so the seed is taken modulo 2**32 (the same trials)."""
    folded = search.sampler({"name": "random", "seed": 2**32 + 6})
    same = search.sampler({"name": "random", "seed": 6})
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    asked = [optuna.create_study(sampler=s).ask(space).params["x"] for s in (folded, same)]
    assert asked[0] == asked[1]


# --- the study from the sweeper's side and from a trial's ---------------------------------


def _study(tmp_path: Path, pruner: dict | None = None) -> tuple[search.Study, optuna.Study]:
    place = search.Study(f"sqlite:///{tmp_path / 'optuna.db'}", "s", None,
                         pruner or {"name": "median"})  # fmt: skip
    study = optuna.create_study(study_name=place.name, storage=search.open_storage(place.storage))
    return place, study


def test_only_trials_of_a_dead_search_are_failed_as_stale(tmp_path: Path) -> None:
    _, study = _study(tmp_path)
    space = {"lr": FloatDistribution(0.01, 1)}
    ours, dead, elsewhere, unmarked = (study.ask(space) for _ in range(4))
    search.mark_running(ours)  # this process: alive
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    tags = {"runner.host": os.uname().nodename, "runner.pid": gone.stdout.strip(),
            "runner.pid_start": "1.0"}  # fmt: skip
    for key, value in tags.items():
        dead.set_user_attr(key, value)
        elsewhere.set_user_attr(key, "another-host" if key == "runner.host" else value)
    assert search.fail_stale(study) == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {ours.number: TrialState.RUNNING, dead.number: TrialState.FAIL,
                      elsewhere.number: TrialState.RUNNING,
                      unmarked.number: TrialState.RUNNING}  # fmt: skip


def test_a_trial_reports_to_its_study_and_the_median_pruner_stops_a_bad_one(
    tmp_path: Path,
) -> None:
    place, study = _study(tmp_path, {"name": "median", "n_startup_trials": 2})
    space = {"lr": FloatDistribution(0.01, 1)}
    for loss in (1.0, 2.0):  # two finished trials, reporting every 10 epochs
        trial = study.ask(space)
        report = search.Reporter(place, trial.number, every=10, run_id=f"run{loss}")
        assert not report(4, loss) and not report(9, loss) and not report(19, loss / 2)
        study.tell(trial, loss / 4)
    assert study.trials[0].intermediate_values == {9: 1.0, 19: 0.5}  # (not epoch 4)
    assert study.trials[0].user_attrs["mlflow_run_id"] == "run1.0"
    good, bad = study.ask(space), study.ask(space)
    assert not search.Reporter(place, good.number, 10, None)(9, 0.5)
    assert search.Reporter(place, bad.number, 10, None)(9, 5.0)  # above the median at epoch 9
    assert study.trials[bad.number].intermediate_values == {9: 5.0}


def test_a_study_that_cannot_be_reached_costs_a_trial_its_pruning_not_its_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    place, study = _study(tmp_path)
    trial = study.ask({"lr": FloatDistribution(0.01, 1)})
    missing = search.Reporter(place, trial.number + 5, every=1, run_id=None)  # no such trial
    assert not missing(0, 1.0) and "will not be pruned" in caplog.text
    report = search.Reporter(place, trial.number, every=1, run_id=None)
    study.tell(trial, 1.0)  # told already: Optuna refuses its reports
    assert not report(0, 1.0) and not report(1, 1.0)


def test_every_trial_of_a_study_reports_at_the_same_epochs_and_a_chunk_ends_at_each() -> None:
    study = search.Study("sqlite:///x.db", "s", report_every=5)
    assert search.reporting(study, epochs=50, chunk=1000) == (5, 5)
    assert search.reporting(study, epochs=7, chunk=1000) == (5, 5)  # (whatever its epochs)
    assert search.reporting(search.Study("s", "s", 2500), 10**6, chunk=1000) == (2500, 625)
    assert search.reporting(search.Study("s", "s"), epochs=50, chunk=1000) == (5, 5)


# --- the sweeper on Hydra's own test app (tests of Hydra's Optuna sweeper, ported) ---------


# Sweeps of Hydra's test app: about 3 s each in-process, so they run with the slow tests.
@pytest.mark.slow
@pytest.mark.usefixtures("hydra_as_fresh")
@pytest.mark.parametrize(("returned", "state"), [(100, TrialState.COMPLETE),
                                                 (None, TrialState.FAIL)])  # fmt: skip
def test_launch_jobs(
    hydra_sweep_runner: TSweepRunner, tmp_path: Path, returned: object, state: TrialState
) -> None:
    """Hydra's Optuna sweeper's `test_launch_jobs`: 8 trials in rounds of 3 on Hydra's test
    app; a trial whose task returns no number is told FAIL, and the search goes on."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = hydra_sweep_runner(
        calling_file=None, calling_module="hydra.test_utils.a_module", config_path="configs",
        config_name="compose.yaml", task_function=lambda cfg: returned,
        temp_dir=str(tmp_path / "sweep"),
        overrides=["hydra/sweeper=optuna", "hydra/launcher=basic", "hydra.sweeper.n_trials=8",
                   "hydra.sweeper.n_jobs=3", f"hydra.sweeper.storage={storage}",
                   "hydra.sweeper.study_name=test", "foo=choice(1,2,3)", "hydra.job.chdir=false"],
    )  # fmt: skip
    with sweep:
        assert sweep.returns is not None
        assert [len(batch) for batch in sweep.returns] == [3, 3, 2]
    study = optuna.load_study(study_name="test", storage=storage)
    assert [t.state for t in study.trials] == [state] * 8


@pytest.mark.slow
@pytest.mark.usefixtures("hydra_as_fresh")
def test_rounds_of_trials_are_whole_hydra_jobs_numbered_as_their_trials(
    hydra_sweep_runner: TSweepRunner, tmp_path: Path
) -> None:
    """As Hydra's BatchedSweeperTestSuite asks of a sweeper, for trials: 6 trials in rounds
    of 2, each job with its directory, its .hydra files and its sampled config; then the
    same search again: 2 more, numbered 6 and 7."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    overrides = ["hydra/sweeper=optuna", "hydra/launcher=basic", "hydra.sweeper.n_jobs=2",
                 f"hydra.sweeper.storage={storage}", "group1=choice(file1,file2)",
                 "bar=choice(100,200,300)", "hydra.sweeper.sampler.seed=1",
                 "hydra.job.chdir=true"]  # fmt: skip

    def task(cfg: object) -> float:
        return float(cfg.foo + cfg.bar)  # type: ignore[attr-defined]

    def searched(n_trials: int, directory: str) -> list:
        sweep = hydra_sweep_runner(
            calling_file=None, calling_module="hydra.test_utils.a_module",
            config_path="configs", config_name="compose.yaml", task_function=task,
            temp_dir=str(tmp_path / directory),
            overrides=[*overrides, f"hydra.sweeper.n_trials={n_trials}"],
        )  # fmt: skip
        with sweep:  # (its directory is removed after)
            assert sweep.returns is not None
            first = 0 if directory == "first" else 6  # job numbers go on from the study's
            flat = [r for batch in sweep.returns for r in batch]
            for number, job in enumerate(flat, start=first):
                verify_dir_outputs(job, job.overrides)  # Hydra's own check of a job's files
                assert Path(job.working_dir) == tmp_path / directory / str(number)
                assert job.hydra_cfg.hydra.job.num == number
                foo = {"group1=file1": 10, "group1=file2": 20}[job.overrides[0]]
                bar = int(job.overrides[1].split("=")[1])
                assert job.cfg == {"foo": foo, "bar": bar} and job.return_value == foo + bar
            return [len(batch) for batch in sweep.returns]

    assert searched(6, "first") == [2, 2, 2]
    assert searched(2, "second") == [2]
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert len(study.trials) == 8
    assert study.best_value == min(t.value for t in study.trials)


# --- whole searches, with the real command --------------------------------------------------


def _study_of(tmp_path: Path) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")
    return optuna.load_study(study_name=summary.study_name,
                             storage=f"sqlite:///{tmp_path / 'optuna.db'}")  # fmt: skip


@pytest.mark.slow
def test_a_search_resumed_with_more_trials_is_one_study_with_one_mlflow_parent(
    tmp_path: Path,
) -> None:
    """8 trials, then the same command with 4 more: one study of 12 trials, jobs numbered
    on from 8, and one MLflow parent run with 12 children. Rounds of 4 trials, each round
    trained as one batch by the batched launcher."""
    search_line = ["-m", "search=optuna", "lr=tag(log,interval(1e-3,0.15))", "epochs=30",
                   "hydra.sweeper.n_jobs=4"]  # fmt: skip
    first = run_cli(*search_line, "hydra.sweeper.n_trials=8", cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(*search_line, "hydra.sweeper.n_trials=4", cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "8 trials so far, 4 more" in second.stdout + second.stderr
    assert (first.stdout + first.stderr).count("Launching 4 jobs locally, trained together") == 2
    study = _study_of(tmp_path)
    assert len(study.trials) == 12
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    sweep_dirs = sorted((tmp_path / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 2
    jobs = [sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) for d in sweep_dirs]
    assert jobs == [list(range(8)), list(range(8, 12))]
    client = store(tmp_path)
    parents = [run for run in all_runs(client) if "runner.study" in run.data.tags]
    assert len(parents) == 1
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.trials"] == "12"
    assert len(children(client, parent.info.run_id)) == 12
    # the second sweep's summary lists its own 4 trials, the study's best is tagged
    summary = pd.read_csv(sweep_dirs[1] / "summary.csv")
    assert sorted(summary["job"]) == [8, 9, 10, 11]
    # the parent holds the whole study: its best trial, that trial's run and value
    best = study.best_trial
    assert parent.data.tags["optuna.best_trial"] == str(best.number)
    (best_run,) = [r for r in children(client, parent.info.run_id)
                   if r.data.tags["hydra.output_dir"].endswith(f"/{best.number}")]  # fmt: skip
    assert parent.data.tags["best_run_id"] == best_run.info.run_id
    assert parent.data.metrics["best_final_loss"] == best.value
    assert "jobs.finished" not in parent.data.tags  # (one run's counts are not the study's)


@pytest.mark.slow
def test_a_search_over_unstable_rates_prunes_by_the_maths_and_by_the_median(
    tmp_path: Path,
) -> None:
    """lr up to 1 on seed 002's data (stable below 2/λmax = 0.1803): plain gradient descent
    at or above it is pruned before it trains; the median pruner stops slow low rates at
    their reports. Both are PRUNED in the study, KILLED with pruned=true in MLflow and
    PRUNED in summary.csv, and runner.compare agrees."""
    done = run_cli("-m", "search=optuna", "lr=tag(log,interval(1e-4,1.0))", "epochs=40",
                   "hydra.sweeper.n_trials=14", "hydra.sweeper.n_jobs=2",
                   "hydra.sweeper.sampler.name=random",
                   "+hydra.sweeper.pruner.n_startup_trials=3", "hydra.sweeper.report_every=5",
                   cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    study = _study_of(tmp_path)
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    summary = pd.read_csv(sweep_dir / "summary.csv").set_index("job")
    (limit,) = summary["stable_lr_max"].unique()  # 2/λmax of seed 002's data: 0.1803
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    unstable = {t.number for t in study.trials if t.params["lr"] >= limit}
    by_maths = {t.number for t in pruned if not t.intermediate_values}
    by_median = {t.number for t in pruned if t.intermediate_values}
    assert by_maths and by_maths == unstable
    assert by_median, [(t.number, t.params, t.intermediate_values) for t in study.trials]
    for t in study.trials:  # every trial that trained reported at its report epochs
        if t.number not in unstable:
            assert set(t.intermediate_values) <= set(range(4, 40, 5))
    assert set(summary.index[summary["status"] == "PRUNED"]) == by_maths | by_median
    assert summary.loc[sorted(by_maths), "pruned_at_epoch"].isna().all()  # before epoch 0
    for number in by_median:
        reports = study.trials[number].intermediate_values
        assert summary.loc[number, "pruned_at_epoch"] == max(reports)
        assert summary.loc[number, "epochs_run"] == summary.loc[number, "pruned_at_epoch"] + 1
    client = store(tmp_path)
    parent = sweep_parent(client, sweep_dir)
    runs = {r.data.tags["hydra.output_dir"]: r for r in children(client, parent)}
    for number in by_maths | by_median:
        run = runs[str(sweep_dir / str(number))]
        assert run.info.status == "KILLED" and run.data.tags["pruned"] == "true"
        assert run.data.tags["pruned_by"] == ("stability" if number in by_maths else "pruner")
    compared = subprocess.run(
        [sys.executable, "-m", "runner.compare", "--tracking-uri",
         f"sqlite:///{tmp_path / 'mlflow.db'}", "--csv", str(tmp_path / "compare.csv")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    statuses = pd.read_csv(tmp_path / "compare.csv")["status"]
    assert (statuses == "PRUNED").sum() == len(by_maths | by_median)


def _start_long_search(tmp_path: Path, *more: str) -> subprocess.Popen:
    """A search whose first trial trains for ever, started once that trial writes."""
    line = [sys.executable, "-m", "runner", "-m", "search=optuna", "epochs=100000000",
            "lr=tag(log,interval(1e-3,0.1))", "hydra.sweeper.study_name=long", *more]  # fmt: skip
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    search_process = subprocess.Popen(line, cwd=tmp_path, env=runner_env(), **quiet)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("multirun/*/*/0/metrics.csv")):
        if time.monotonic() > deadline or search_process.poll() is not None:
            search_process.kill()
            pytest.fail("the search did not start its first trial")
        time.sleep(0.2)
    time.sleep(1.0)  # training: the trial is RUNNING
    return search_process


@pytest.mark.slow
def test_a_search_stopped_by_sigterm_fails_its_running_trials_at_once(tmp_path: Path) -> None:
    stopped = _start_long_search(tmp_path, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=60) == 128 + signal.SIGTERM
    assert [t.state for t in _study_of(tmp_path).trials] == [TrialState.FAIL] * 2
    statuses = sorted(r.info.status for r in all_runs(store(tmp_path)))
    assert statuses == ["KILLED"] * 3  # the parent and both trials


@pytest.mark.slow
def test_a_killed_search_s_stale_trial_is_failed_when_it_is_resumed(tmp_path: Path) -> None:
    """SIGKILL of the search leaves its trial RUNNING in the study (its MLflow run is ended
    KILLED by the tracking process, which outlives it); the same study again fails it."""
    killed = _start_long_search(tmp_path, "hydra.sweeper.n_trials=1")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert [t.state for t in _study_of(tmp_path).trials] == [TrialState.RUNNING]
    # the same study again (named: this one trains 20 epochs, not 10^8)
    again = run_cli("-m", "search=optuna", "epochs=20", "lr=tag(log,interval(1e-3,0.1))",
                    "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=long",
                    cwd=tmp_path, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Failed trials [0]: RUNNING when their search was killed" in again.stderr + again.stdout
    states = [t.state for t in _study_of(tmp_path).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    client = store(tmp_path)  # the killed trial's MLflow run did not stay RUNNING either
    statuses = sorted(r.info.status for r in all_runs(client) if "runner.study" not in r.data.tags)
    assert statuses == ["FINISHED", "KILLED"]
    parents = [r for r in all_runs(client) if "runner.study" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent again


@pytest.mark.slow
def test_trials_in_joblib_workers_report_to_the_study(tmp_path: Path) -> None:
    """A round of 2 trials in two joblib worker processes: each trial reports its loss to
    the stored study from its worker, every 4th epoch (a tenth of its 40)."""
    done = run_cli("-m", "search=optuna", "lr=tag(log,interval(1e-3,0.1))", "epochs=40",
                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                   "hydra.sweeper.n_trials=2", cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _study_of(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(3, 39, 4))
    client = store(tmp_path)
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    runs = children(client, sweep_parent(client, sweep_dir))
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 2
    assert len({r.data.tags["runner.main_pid"] for r in runs}) == 2  # two worker processes
