"""Config composition, the experiment presets, and the one-line errors of the gate."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import make_config

from runner import gate
from runner import overrides as override_checks
from runner.config import ConfigError


def check_command_line(argv: list[str]) -> gate.Plan:
    return gate.check(argv, reserve=False)


def test_defaults_are_seed_002() -> None:
    conf = make_config()
    assert (conf.lr, conf.epochs, conf.device, conf.zero_grad) == (0.05, 50, "cpu", True)
    assert (conf.model.bias, conf.model.a, conf.model.b) == (True, 1.0, 1.0)
    assert (conf.data.kind, conf.data.x, conf.data.true_a, conf.data.true_b) == (
        "inline",
        [1.0, 2.0, 3.0],
        0.5,
        0.5,
    )
    assert (conf.loss.name, conf.optimizer.name) == ("manual", "manual")
    assert (conf.mlflow.enabled, conf.mlflow.experiment) == (True, "runner")


def test_documented_overrides() -> None:
    conf = make_config("optimizer=sgd", "lr=0.05", "loss=mse", "device=auto", "seed=7")
    assert (conf.optimizer.name, conf.loss.name, conf.device, conf.seed) == (
        "sgd",
        "mse",
        "auto",
        7,
    )


def test_experiment_presets() -> None:
    c0 = make_config("experiment=seed_000")
    assert (c0.model.bias, c0.lr, c0.epochs, c0.data.x, c0.data.y) == (False, 0.1, 1, [2.0], [3.0])
    c3 = make_config("experiment=seed_003")
    assert (c3.model.init, c3.lr, c3.epochs, len(c3.data.x)) == ("random", 0.01, 100, 4)
    # Overrides on the command line still win over a preset.
    assert make_config("experiment=seed_002", "lr=0.2").lr == 0.2


def test_data_presets() -> None:
    assert make_config("data=synthetic").data.kind == "synthetic"
    assert make_config("data=csv", "data.path=p.csv").data.path == "p.csv"
    assert make_config("model=linear_nobias").model.bias is False


BAD = [
    # (override, key named in the message, text the message must hold)
    ("optimizer=adamw", "optimizer", "adam, manual, momentum, sgd"),
    ("loss=l1", "loss", "manual, mse"),
    ("model=mlp", "model", "linear, linear_nobias"),
    ("lrr=0.1", "lrr", "did you mean lr"),
    ("+newkey=1", "newkey", "an existing key"),
    ("lr=abc", "lr", "a number"),
    ("lr=0", "lr", "> 0"),
    ("lr=-1", "lr", "> 0"),
    ("lr=nan", "lr", "finite"),
    ("lr=inf", "lr", "finite"),
    ("epochs=0", "epochs", ">= 1"),
    ("epochs=1.5", "epochs", "an integer"),
    ("device=tpu", "device", "cpu, cuda, auto"),
    ("zero_grad=maybe", "zero_grad", "true or false"),
    ("model.init=xavier", "model.init", "fixed, random"),
    ("data=csv", "data.path", "CSV file"),
    ("data.path=p.csv", "data.path", "add data=csv"),
    ("data=synthetic data.x=[1,2]", "data.x", "add data=seed_002"),
    ("seed=-1", "seed", "[0, 9223372036854775807]"),
    ("data=synthetic data.seed=-5", "data.seed", "null or an integer in [0,"),
    ("seed=1180591620717411303424", "seed", "an integer in [0,"),
    ("chunk=10000000000", "chunk", "[1, 1000000]"),
    ("data.x=[1e39,2] data.y=[1,2]", "data.x", "finite number of at most 3.403e+38"),
    ("mlflow.experiment=" + "x" * 501, "mlflow.experiment", "1 to 500 characters"),
    ("mlflow.tracking_uri=garbage", "mlflow.tracking_uri", "sqlite:///ABSOLUTE/PATH.db"),
    ("mlflow.tracking_uri=file:///tmp/mlruns", "mlflow.tracking_uri", "http(s)://host:port"),
    ("mlflow.tracking_uri=sqlite:///rel.db", "mlflow.tracking_uri", "four slashes"),
    ("mlflow.tracking_uri=sqlite:////proc/x.db", "mlflow.tracking_uri", "written to"),
    (
        "mlflow.tracking_uri=sqlite:////nonexistent/dir/x.db",
        "mlflow.tracking_uri",
        "/nonexistent/dir does not exist",
    ),
    ("mlflow.tracking_uri=sqlite:////tmp", "mlflow.tracking_uri", "is not a file"),
    (
        "mlflow.tracking_uri=http://alice:S3cr3t@127.0.0.1:5077",
        "mlflow.tracking_uri",
        "MLFLOW_TRACKING_PASSWORD",
    ),
    ("-m hydra/launcher=joblib hydra.launcher.n_jobs=0", "hydra.launcher.n_jobs", ">= 1"),
    (
        "hydra.output_subdir=/proc/x",
        "hydra.output_subdir",
        "one of the Hydra settings the runner takes",
    ),
    ("lr=" + "0" * 100_000, "argument", "at most 10000 characters"),
    ("data=seed_003 data.x=[1,2]", "data.y", "as long as data.x"),
    ("optimizer.name=adamw", "optimizer.name", "manual, sgd, adam"),
    ("optimizer=sgd optimizer.momentum=1", "optimizer.momentum", "[0, 1)"),
    ("optimizer=sgd optimizer.nesterov=true", "optimizer.nesterov", "momentum=0"),
    ("optimizer=adam optimizer.betas=[0.9]", "optimizer.betas", "two numbers"),
    ("optimizer=adam optimizer.momentum=0.5", "optimizer.momentum", "adam"),
    ("check_grad=true zero_grad=false", "check_grad", "accumulated"),
    ("check_grad_tol=0", "check_grad_tol", "> 0"),
    ("stop.tol=-1", "stop.tol", "null or > 0"),
    ("schedule=warmup", "schedule", "constant, cosine, exponential, step"),
    ("schedule=step schedule.step_size=0", "schedule.step_size", "an integer >= 1"),
    ("schedule=cosine schedule.gamma=0.5", "schedule.gamma", "add schedule=step"),
    ("batch_size=0", "batch_size", "null or an integer >= 1"),
    ("log_steps=true", "log_steps", "unless batch_size is set"),
    ("data.val_fraction=1", "data.val_fraction", "in [0, 1)"),
    ("stop.patience=3", "stop.patience", "data.val_fraction > 0"),
    ("mlflow.log_every=0", "mlflow.log_every", "an integer >= 1"),
    (
        "data=synthetic data.features=3 data.true_w=[1,2]",
        "data.true_w",
        "a list of data.features=3 numbers",
    ),
    ("data=synthetic data.correlation=0.5", "data.correlation", "0 with one feature"),
    ("data=synthetic data.features=2 data.correlation=1", "data.correlation", "in [0, 1)"),
    ("data.features=2", "data.features", "a setting of data=synthetic"),
    ("model.init=random model.w=[1,2]", "model.w", "null with model.init=random"),
    ("model.w=[1,nan]", "model.w", "null or a non-empty list of finite numbers"),
    ("data=synthetic data.features=3 model.w=[1,2]", "model.w", "a list of 3 numbers"),
    ("model.w=[1,2]", "model.w", "a list of 1 numbers"),
    ("mlflow.log_model=maybe", "mlflow.log_model", "true or false"),
    ("lr=0.1,0.2", "lr", "add -m"),
    ("lr=[1,2", "override", "grammar"),
    ("optimizer._target_=torch.optim.Adam", "optimizer._target_", "command line"),
    ("+hydra.callbacks.x._target_=os.system", "hydra.callbacks", "command line"),
    ("-cn config", "--config-name", "its own conf/"),
    ("--experimental-rerun x.pickle", "--experimental-rerun", "its own conf/"),
    ("--frobnicate", "arguments", "unrecognized arguments"),
]


@pytest.mark.parametrize(("override", "key", "hint"), BAD, ids=[b[0][:60] for b in BAD])
def test_bad_override_is_one_clear_line(override: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_command_line(override.split())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(key)
    assert hint in message


def test_sweeps_are_checked_value_by_value() -> None:
    check_command_line(["-m", "lr=0.01,0.05", "optimizer=manual,sgd"])
    check_command_line(["-m", "lr=range(0.01,0.11,0.01)"])
    with pytest.raises(ConfigError, match=r"^lr=0\.0 is not allowed"):
        check_command_line(["-m", "lr=0.1,0", "optimizer=sgd"])
    with pytest.raises(ConfigError, match=r"^optimizer='adamw'"):
        check_command_line(["--multirun", "optimizer=sgd,adamw"])


def test_flags_that_print_run_nothing() -> None:
    plan = check_command_line(["--cfg", "job", "lr=0.1"])  # Hydra prints the config
    assert not plan.runs_jobs and plan.out_dir is None and "--cfg" in plan.hydra_argv


@pytest.mark.parametrize(
    ("argv", "here"),
    [
        (["lr=0.1"], True),
        (["-m", "lr=0.1,0.2"], True),  # the batched launcher, the default
        (["-m", "hydra/launcher=basic", "lr=0.1,0.2"], True),
        (["-m", "hydra/launcher=joblib", "lr=0.1,0.2"], False),
    ],
)
def test_the_plan_says_whether_the_jobs_run_in_this_process(argv: list[str], here: bool) -> None:
    assert check_command_line(argv).jobs_here is here  # (the main process imports torch then)


def test_flat_config_is_the_runs_params() -> None:
    import pandas as pd

    from runner.config import flat, plain

    two_features = ["data=synthetic", "data.features=2", "model.w=[1.5,2]", "schedule=step"]
    for overrides in ([], ["optimizer=adam", "data=synthetic"], two_features):
        conf = make_config(*overrides)
        expected = pd.json_normalize(plain(conf)).iloc[0].to_dict()  # nested keys dotted
        assert flat(conf) == expected and "optimizer.name" in expected


def test_a_password_never_shows_in_the_message() -> None:
    for secret in ("S3cr3t", "p@ss/word", "a/b@c"):
        with pytest.raises(ConfigError) as caught:
            check_command_line([f"mlflow.tracking_uri=http://alice:{secret}@127.0.0.1:5077"])
        assert secret not in str(caught.value) and "127.0.0.1:5077" in str(caught.value)


KEYS = ["lr", "epochs", "device", "seed", "zero_grad", "chunk", "print_every", "model", "loss",
        "optimizer", "data", "model.a", "model.init", "data.x", "data.kind", "stop.tol",
        "mlflow.enabled", "experiment", "+lr", "~epochs", "lrr", "+newkey", "data.n"]  # fmt: skip
ODD_VALUES = ["0", "-1", "1e-3", "nan", "inf", "-inf", "null", "true", "[1,2]", "[]", "{}",
              "abc", "'quoted'", "1.5", "cuda", "tpu", "manual", "sgd", "csv", "seed_000",
              "${lr}", "${nope}", "[1,", "0.1,0.2", "range(1,3)", ""]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-(10**12), 10**12).map(str),
)


@settings(max_examples=80, deadline=None)
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), value=VALUES)
def test_any_override_is_a_valid_config_or_one_clear_line(key: str, value: str) -> None:
    try:
        check_command_line([f"{key}={value}"])
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message and " is not allowed: " in message


@pytest.mark.parametrize(
    ("search", "sweeper"),
    [
        ([], "hydra_plugins.runner_sweeper.GridSweeper"),
        (["search=optuna_lr"], "hydra_plugins.runner_optuna.OptunaSweeper"),
        (["search=optuna"], "hydra_plugins.runner_optuna.OptunaSweeper"),
    ],
)
def test_a_sweep_is_searched_by_the_chosen_sweeper(search: list[str], sweeper: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from runner.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=search, return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == sweeper
    get_class(sweeper)  # importable: the runner's own sweeper ships in its hydra_plugins


@pytest.mark.parametrize(("option", "extra"), [("ray", "ray"), ("submitit_local", "submitit")])
def test_a_launcher_without_its_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, option: str, extra: str
) -> None:
    monkeypatch.setattr(override_checks, "launcher_installed", lambda name: False)
    with pytest.raises(ConfigError) as caught:
        check_command_line(["-m", f"hydra/launcher={option}", "lr=0.1,0.2"])
    assert str(caught.value).startswith(f"hydra/launcher='{option}' is not allowed: installed")
    assert f"pip install 'runner[{extra}]'" in str(caught.value)


def test_a_read_only_store_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    monkeypatch.setattr("os.access", lambda path, mode: False)  # root may write anything
    with pytest.raises(ConfigError, match=r"is read-only\)$"):
        check_command_line([f"mlflow.tracking_uri=sqlite:///{db}"])


@pytest.mark.parametrize(
    "overrides",
    [
        ("lr=0.3", "optimizer=sgd", "schedule=step", "schedule.gamma=0.3"),
        ("experiment=seed_003", "lr=0.2"),
        ("data.x=[1,2]", "data.y=[3,4]", "data.true_a=null", "data.true_b=null"),
        ("optimizer.betas=[0.5,0.6]", "optimizer=adam", "batch_size=2"),
        ("model=linear_nobias", "model.b=0.0", "data=synthetic", "data.val_fraction=0.2"),
    ],
)
def test_the_tests_quick_configs_are_the_ones_hydra_composes(overrides: tuple[str, ...]) -> None:
    """tests/support.py composes each set of group choices once and applies plain settings
    with OmegaConf.update: the very Config a whole composition gives."""
    composed = gate.typed(gate.compose_checked(list(overrides), {}))
    assert make_config(*overrides) == composed


def _readme_commands() -> list[list[str]]:
    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    blocks = [block.replace("\\\n", " ") for block in blocks]  # continued lines
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[3:] for line in lines if line.startswith("python -m runner ")]


@pytest.mark.slow  # about 0.3 s each: Hydra composes every one
@pytest.mark.parametrize("argv", _readme_commands(), ids=" ".join)
def test_every_command_of_the_readme_passes_the_gate(argv: list[str]) -> None:
    if "hydra/launcher=submitit_slurm" in argv and shutil.which("srun") is None:
        with pytest.raises(ConfigError, match="srun is not on PATH"):  # (no Slurm here)
            check_command_line(argv)
        return
    check_command_line(argv)


def test_an_optuna_file_is_not_taken_for_an_mlflow_store(tmp_path: Path) -> None:
    """mlflow.tracking_uri naming a study's file (optuna.db) is refused before MLflow writes
    its tables into it; the file is left as it was."""
    import optuna

    study = tmp_path / "study.db"
    optuna.create_study(storage=f"sqlite:///{study}")
    before = study.read_bytes()
    with pytest.raises(ConfigError, match="holds an Optuna study"):
        check_command_line([f"mlflow.tracking_uri=sqlite:///{study}"])
    assert study.read_bytes() == before
