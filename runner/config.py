"""The typed schema Hydra composes into, with each setting's check beside its field.

`validate(conf)` walks the schema once and raises a ConfigError naming the first setting
a run cannot use: the key, the bad value and what is allowed. runner/gate.py calls it
once per job's settings, before anything is written. Nothing here imports torch or MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from hydra.core.config_store import ConfigStore

from runner.store import (
    MLFLOW_TABLES,
    OPTUNA_TABLES,
    password_problem,
    redact,
    sqlite_tables,
)


def _conf_dir() -> Path:
    packaged = Path(__file__).parent / "conf"  # a wheel install carries the YAML inside
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "conf"


CONF_DIR = _conf_dir()  # the YAML files: config.yaml and one folder per config group

SEED_MAX = 2**63 - 1  # torch.manual_seed and numpy's generators both take [0, 2**63)
CHUNK_MAX = 1_000_000  # epochs of history on the device: 1e6 x 8 float32 columns = 32 MB
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(float32).max: the data become float32
EXPERIMENT_NAME_MAX = 500  # MLflow refuses longer experiment names
FEATURES_MAX = 1000  # y = w . x + b: a Python loop over the features in each forward pass


class ConfigError(ValueError):
    """A bad setting, reported as one line: the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={_shown(value)} is not allowed: {allowed}")


def _shown(value: Any) -> str:
    text = repr(value.value if isinstance(value, Enum) else value)
    return text if len(text) <= 80 else f"{text[:60]}...({len(text)} characters)"


# Names the registries in runner/losses.py and runner/optimizers.py are keyed by. str-based,
# so `conf.loss.name == "mse"` holds and MLflow params read "mse".
class LossName(str, Enum):
    manual = "manual"  # ((y_hat - y) ** 2).mean(), written out
    mse = "mse"  # torch.nn.MSELoss


class OptimizerName(str, Enum):
    manual = "manual"  # p <- p - lr * grad inside torch.no_grad(), written out
    sgd = "sgd"  # torch.optim.SGD
    adam = "adam"  # torch.optim.Adam


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"  # CUDA when torch sees a GPU


class Init(str, Enum):
    fixed = "fixed"  # start at (model.a, model.b); with k features at (model.w, model.b)
    random = "random"  # each weight, then b ~ N(0, 1) from the seed


class DataKind(str, Enum):
    inline = "inline"
    synthetic = "synthetic"
    csv = "csv"


# A check: a predicate on the value and the words for what is allowed.
Rule = tuple[Callable[[Any], bool], str]


def check(ok: Callable[[Any], bool], allowed: str) -> dict[str, Rule]:
    """Field metadata: validate() raises ConfigError(key, value, allowed) when ok(value) fails."""
    return {"check": (ok, allowed)}


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def _float32(v: float | None) -> bool:
    return v is None or (math.isfinite(v) and abs(v) <= FLOAT32_MAX)


def _weights(v: list[float] | None) -> bool:
    return v is None or (len(v) > 0 and all(map(_finite, v)))


def _seed(v: int | None) -> bool:
    return v is None or 0 <= v <= SEED_MAX


FINITE32 = f"a finite number of at most {FLOAT32_MAX:.4g} in size (the data are float32)"


@dataclass
class ModelConfig:
    bias: bool = True  # false: y = a*x, the single parameter of seed 000
    init: Init = Init.fixed
    a: float = field(default=1.0, metadata=check(_finite, "a finite number"))
    b: float = field(default=1.0, metadata=check(_finite, "a finite number"))
    # k features: the starts of w1..wk; null: each starts at a
    w: Optional[List[float]] = field(  # noqa: UP006, UP045
        default=None, metadata=check(_weights, "null or a non-empty list of finite numbers")
    )

    def check(self) -> None:
        if not self.bias and self.b != 0.0:
            raise ConfigError("b", self.b, "0.0 when model.bias=false")
        if self.w is not None and self.init == Init.random:
            raise ConfigError("w", self.w, "null with model.init=random (the seed draws them)")


@dataclass
class LossConfig:
    name: LossName = LossName.manual


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.manual
    # manual, sgd: v = momentum * v + g, the step along v (or g + momentum * v with nesterov)
    momentum: float = field(default=0.0, metadata=check(lambda v: 0 <= v < 1, "in [0, 1)"))
    nesterov: bool = False
    # every optimizer: adds weight_decay * p to the gradient
    weight_decay: float = field(  # (torch adds it in float32: a larger one overflows)
        default=0.0,
        metadata=check(
            lambda v: _float32(v) and v >= 0, f"a number >= 0 of at most {FLOAT32_MAX:.4g}"
        ),
    )
    betas: List[float] = field(  # noqa: UP006 - adam
        default_factory=lambda: [0.9, 0.999],
        metadata=check(
            lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"
        ),
    )
    eps: float = field(default=1e-8, metadata=check(_positive, "a number > 0"))  # adam

    def check(self) -> None:
        if self.nesterov and not self.momentum:
            raise ConfigError("nesterov", True, "false when momentum=0")
        if self.name == OptimizerName.adam and (self.momentum or self.nesterov):
            raise ConfigError("momentum", self.momentum, "0 with adam (its betas play that part)")


class ScheduleName(str, Enum):
    constant = "constant"  # lr throughout
    step = "step"  # lr * gamma every step_size epochs (torch.optim.lr_scheduler.StepLR)
    exponential = "exponential"  # lr * gamma every epoch (ExponentialLR)
    cosine = "cosine"  # from lr down to eta_min over t_max epochs (CosineAnnealingLR)


# Which schedule settings belong to which schedule, and which of them it cannot do without.
SCHEDULE_FIELDS = {
    ScheduleName.constant: set(),
    ScheduleName.step: {"step_size", "gamma"},
    ScheduleName.exponential: {"gamma"},
    ScheduleName.cosine: {"t_max", "eta_min"},
}
SCHEDULE_NEEDS = {ScheduleName.step: ("step_size", "gamma"), ScheduleName.exponential: ("gamma",)}


@dataclass
class ScheduleConfig:
    """How lr changes from epoch to epoch; stepped once per epoch, after the optimizer."""

    name: ScheduleName = ScheduleName.constant
    step_size: Optional[int] = field(  # noqa: UP045 - step
        default=None, metadata=check(lambda v: v is None or v >= 1, "an integer >= 1")
    )
    gamma: Optional[float] = field(  # noqa: UP045 - step, exponential
        default=None, metadata=check(lambda v: v is None or _positive(v), "a number > 0")
    )
    t_max: Optional[int] = field(  # noqa: UP045 - cosine; null: the run's epochs
        default=None, metadata=check(lambda v: v is None or v >= 1, "null or an integer >= 1")
    )
    eta_min: Optional[float] = field(  # noqa: UP045 - cosine: the lowest lr
        default=None,
        metadata=check(lambda v: v is None or (math.isfinite(v) and v >= 0), "a number >= 0"),
    )

    def check(self) -> None:
        for name in sorted(set().union(*SCHEDULE_FIELDS.values()) - SCHEDULE_FIELDS[self.name]):
            if getattr(self, name) is not None:
                owners = [k.value for k, names in SCHEDULE_FIELDS.items() if name in names]
                allowed = f"a setting of schedule={' or '.join(owners)} (add schedule={owners[0]})"
                raise ConfigError(name, getattr(self, name), allowed)
        for name in SCHEDULE_NEEDS.get(self.name, ()):
            if getattr(self, name) is None:
                raise ConfigError(name, None, f"a value for schedule={self.name.value}")


# Which data settings belong to which kind: a setting of a kind that is not selected is an
# error, never silently dropped (`data.path=p.csv` without `data=csv`).
DATA_FIELDS = {
    DataKind.inline: {"x", "y", "true_a", "true_b"},
    DataKind.synthetic: {
        "n",
        "true_a",
        "true_b",
        "noise",
        "seed",
        "features",
        "true_w",
        "correlation",
    },
    DataKind.csv: {"path"},
}
DATA_PRESET = {DataKind.inline: "seed_002", DataKind.synthetic: "synthetic", DataKind.csv: "csv"}


def _points(v: list[float] | None) -> bool:
    return v is None or (len(v) > 0 and all(_float32(p) for p in v))


@dataclass
class DataConfig:
    kind: DataKind = DataKind.inline
    # inline: the points; y may be left null and computed as true_a * x + true_b
    x: Optional[List[float]] = field(  # noqa: UP006, UP045
        default=None, metadata=check(_points, f"a non-empty list, each {FINITE32}")
    )
    y: Optional[List[float]] = field(  # noqa: UP006, UP045
        default=None, metadata=check(_points, f"a non-empty list, each {FINITE32}")
    )
    true_a: Optional[float] = field(default=None, metadata=check(_float32, FINITE32))  # noqa: UP045
    true_b: Optional[float] = field(default=None, metadata=check(_float32, FINITE32))  # noqa: UP045
    # synthetic: n points, x ~ U(-1, 1), y = true_a * x + true_b + noise * N(0, 1)
    n: Optional[int] = field(  # noqa: UP045
        default=None, metadata=check(lambda v: v is None or 1 <= v <= 10**9, "in [1, 1e9]")
    )
    # synthetic with k features: y = true_w . x + true_b + noise; null: one feature
    features: Optional[int] = field(  # noqa: UP045
        default=None,
        metadata=check(lambda v: v is None or 1 <= v <= FEATURES_MAX, f"in [1, {FEATURES_MAX}]"),
    )
    true_w: Optional[List[float]] = field(  # noqa: UP006, UP045 - null: each weight is true_a
        default=None, metadata=check(_points, f"a non-empty list, each {FINITE32}")
    )
    # every two features correlate this much: x_i = sqrt(1 - c) u_i + sqrt(c) u_0, u ~ U(-1, 1)
    # (so a feature spans up to +-(sqrt(1 - c) + sqrt(c)), at most +-1.41)
    correlation: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata=check(lambda v: v is None or (math.isfinite(v) and 0 <= v < 1), "in [0, 1)"),
    )
    noise: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata=check(lambda v: v is None or (_float32(v) and v >= 0), "a number >= 0"),
    )
    seed: Optional[int] = field(  # noqa: UP045 - null: the run's seed
        default=None, metadata=check(_seed, f"null or an integer in [0, {SEED_MAX}]")
    )
    # csv: numeric columns x and y, or x1..xk and y (relative paths: from the launch dir)
    path: Optional[str] = field(  # noqa: UP045
        default=None, metadata=check(lambda v: v is None or bool(v.strip()), "a file name")
    )
    # any kind: this share of the points, drawn with the seed, is held out for val_loss
    val_fraction: float = field(
        default=0.0, metadata=check(lambda v: math.isfinite(v) and 0 <= v < 1, "in [0, 1)")
    )

    def check(self) -> None:
        for name in sorted(set().union(*DATA_FIELDS.values()) - DATA_FIELDS[self.kind]):
            value = getattr(self, name)
            if value is not None:
                kinds = [k.value for k, names in DATA_FIELDS.items() if name in names]
                allowed = (
                    f"a setting of data={DATA_PRESET[DataKind(kinds[0])]}, and the data in use are "
                    f"{self.kind.value} (add data={DATA_PRESET[DataKind(kinds[0])]})"
                )
                raise ConfigError(name, value, allowed)
        if self.kind == DataKind.inline:
            self._check_inline()
        elif self.kind == DataKind.synthetic:
            self._check_synthetic()
        elif self.path is None:
            raise ConfigError("path", None, "the path of a CSV file with columns x (or x1..xk), y")

    def _check_synthetic(self) -> None:
        needed = ("n", "true_b", "noise") + (("true_a",) if self.true_w is None else ())
        for name in needed:
            if getattr(self, name) is None:
                raise ConfigError(name, None, "a value for data=synthetic")
        k = self.features or 1
        if self.true_w is not None and len(self.true_w) != k:
            raise ConfigError("true_w", self.true_w, f"a list of data.features={k} numbers")
        if self.correlation and k == 1:
            raise ConfigError("correlation", self.correlation, "0 with one feature (or set "
                              "data.features to 2 or more)")  # fmt: skip

    def _check_inline(self) -> None:
        if self.x is None:
            raise ConfigError("x", None, "a non-empty list of numbers")
        if self.y is None:
            for name in ("true_a", "true_b"):  # y = true_a * x + true_b needs both
                if getattr(self, name) is None:
                    raise ConfigError(name, None, "a number when data.y is not given")
        elif len(self.y) != len(self.x):
            raise ConfigError("y", self.y, f"a list as long as data.x ({len(self.x)} values)")


def tracking_uri_problem(uri: str | None) -> str | None:
    """Why an MLflow tracking URI cannot be used, or None when it can."""
    if uri is None:
        return None
    if problem := password_problem(uri, "tracking"):
        return problem
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return None if parts.hostname else "http(s)://host[:port]"
    if parts.scheme == "sqlite":
        return _sqlite_problem(uri)
    if parts.scheme in ("postgresql", "mysql", "mssql"):
        return "an MLflow server (http://...) or sqlite:///path (databases need their drivers)"
    return (
        "null (sqlite:///<launch dir>/mlflow.db), sqlite:///ABSOLUTE/PATH.db or http(s)://host:port"
    )


def _sqlite_problem(uri: str) -> str | None:
    if not uri.startswith("sqlite:////"):
        return "sqlite:////ABSOLUTE/path/mlflow.db (four slashes: an absolute path)"
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        if not path.is_file():
            return f"a database file ({path} is not a file)"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"a database this process can write ({path} is read-only)"
        tables = sqlite_tables(path)
        if tables >= OPTUNA_TABLES and not tables & MLFLOW_TABLES:
            return f"an MLflow store ({path} holds an Optuna study)"
        return None
    if not path.parent.is_dir():
        return f"a file in an existing directory ({path.parent} does not exist)"
    return _writable_dir(path.parent)


def _writable_dir(directory: Path) -> str | None:
    """Whether files can be created here; the probe leaves nothing behind."""
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as err:
        return f"a directory files can be written to ({directory}: {err.strerror})"
    return None


@dataclass
class MlflowConfig:
    enabled: bool = True
    required: bool = True  # false: when the store cannot be reached, train with the CSV only
    tracking_uri: Optional[str] = None  # noqa: UP045 - null: sqlite:///<launch dir>/mlflow.db
    # every N-th epoch (and the last) goes to MLflow; the CSV keeps every epoch
    log_every: int = field(default=1, metadata=check(lambda v: v >= 1, "an integer >= 1"))
    # the trained model as an MLflow pyfunc model (runs:/<id>/model); null: for a single
    # run, not for each job of a sweep (each would pay about 25 ms of store work)
    log_model: Optional[bool] = None  # noqa: UP045
    experiment: str = field(
        default="runner",
        metadata=check(
            lambda v: 0 < len(v) <= EXPERIMENT_NAME_MAX, f"1 to {EXPERIMENT_NAME_MAX} characters"
        ),
    )

    def check(self) -> None:
        if problem := tracking_uri_problem(self.tracking_uri):
            raise ConfigError("tracking_uri", redact(self.tracking_uri), problem)


@dataclass
class StopConfig:
    tol: Optional[float] = field(  # noqa: UP045 - stop once |loss_k - loss_k-1| < tol
        default=None, metadata=check(lambda v: v is None or _positive(v), "null or > 0")
    )
    # stop once val_loss has not improved for this many epochs (needs data.val_fraction > 0)
    patience: Optional[int] = field(  # noqa: UP045
        default=None, metadata=check(lambda v: v is None or v >= 1, "null or an integer >= 1")
    )


@dataclass
class SweepConfig:
    # false: a grid sweep reuses each job whose identical run FINISHED in the store
    rerun: bool = False
    # the most jobs (a grid's combinations, a search's trials) one command may start; counted
    # before anything is expanded, so a typo such as range(1,1e12) is one line, not a hang
    max_jobs: int = field(default=10_000, metadata=check(lambda v: v >= 1, "an integer >= 1"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    lr: float = field(default=0.05, metadata=check(_positive, "a finite number > 0"))
    epochs: int = field(default=50, metadata=check(lambda v: v >= 1, "an integer >= 1"))
    device: Device = Device.cpu
    seed: int = field(default=0, metadata=check(_seed, f"an integer in [0, {SEED_MAX}]"))
    zero_grad: bool = True  # false: gradients accumulate across epochs, as in seed 001
    # points per step; null: the whole data set, one step an epoch (the notebooks)
    batch_size: Optional[int] = field(  # noqa: UP045
        default=None, metadata=check(lambda v: v is None or v >= 1, "null or an integer >= 1")
    )
    shuffle: bool = True  # mini-batches: a fresh order each epoch from the seed
    drop_last: bool = False  # mini-batches: skip the last, smaller batch
    log_steps: bool = False  # mini-batches: every step's loss and parameters (steps.csv)
    # epochs of history kept on the device between two host copies
    chunk: int = field(
        default=1000, metadata=check(lambda v: 1 <= v <= CHUNK_MAX, f"in [1, {CHUNK_MAX}]")
    )
    # print every N-th epoch's row as the notebooks do; 0: summary only
    print_every: int = field(default=0, metadata=check(lambda v: v >= 0, "an integer >= 0"))
    check_grad: bool = False  # compare autograd's gradient with the analytic one every epoch
    check_grad_tol: float = field(  # ... and fail the run when they differ by more (relative)
        default=1e-4, metadata=check(_positive, "a number > 0")
    )
    plots: Optional[bool] = None  # noqa: UP045 - PNGs of the run; null: yes, unless in a sweep
    progress: bool = True  # a progress bar on a terminal, for runs that last a while
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)

    def check(self) -> None:
        if self.check_grad and not self.zero_grad:
            allowed = "false with zero_grad=false (accumulated gradients are not the analytic one)"
            raise ConfigError("check_grad", True, allowed)
        if self.log_steps and self.batch_size is None:
            allowed = "false unless batch_size is set (a whole-data epoch is one step)"
            raise ConfigError("log_steps", True, allowed)
        if self.stop.patience is not None and not self.data.val_fraction:
            allowed = "null unless data.val_fraction > 0 (it watches val_loss)"
            raise ConfigError("stop.patience", self.stop.patience, allowed)
        features = 1 if self.data.kind == DataKind.inline else self.data.features
        if self.model.w is not None and features is not None and len(self.model.w) != features:
            allowed = f"null or a list of {features} numbers (one per feature of the data)"
            raise ConfigError("model.w", self.model.w, allowed)  # (a CSV's: once it is read)


ConfigStore.instance().store(name="schema", node=Config)


def plain(conf: Any) -> dict[str, Any]:
    """A dataclass config as plain values (names as strings), fast: no OmegaConf involved."""
    return json.loads(json.dumps(dataclasses.asdict(conf)))  # str-Enums dump as their values


def flat(conf: Any) -> dict[str, Any]:
    """A dataclass config as {dotted key: plain value}, a list one value: a run's params."""
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(plain(conf), "")
    return out


def validate(node: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first setting a run cannot use: every field's own check,
    then each section's check() of how its fields go together. Types are OmegaConf's job."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
        elif "check" in f.metadata:
            ok, allowed = f.metadata["check"]
            if not ok(value):
                raise ConfigError(prefix + f.name, value, allowed)
    if hasattr(node, "check"):
        try:
            node.check()
        except ConfigError as err:  # the section names its own field; give the full key
            raise ConfigError(prefix + err.key, err.value, err.allowed) from None
