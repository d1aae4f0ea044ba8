"""The typed schema Hydra composes into, and the value checks a schema cannot express.

Nothing here imports torch or MLflow: a bad command line must be answered in
milliseconds, before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


def _conf_dir() -> Path:
    packaged = Path(__file__).parent / "conf"  # a wheel install carries the YAML inside
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "conf"


CONF_DIR = _conf_dir()  # the YAML files: config.yaml and one folder per config group

# The registries in runner/losses.py and runner/optimizers.py are keyed by these names
# (they assert so on import); the names live here so checking them needs no torch.
LOSS_NAMES = ("manual", "mse")
OPTIMIZER_NAMES = ("manual", "sgd", "adam")
DEVICES = ("cpu", "cuda", "auto")
INITS = ("fixed", "random")
DATA_KINDS = ("inline", "synthetic", "csv")


class ConfigError(ValueError):
    """A bad setting, reported as one line: the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


@dataclass
class ModelConfig:
    bias: bool = True  # false: y = a*x, the single parameter of seed 000
    init: str = "fixed"  # fixed: start at (a, b); random: a, b ~ N(0, 1) from the seed
    a: float = 1.0
    b: float = 1.0


@dataclass
class LossConfig:
    name: str = "manual"


@dataclass
class OptimizerConfig:
    name: str = "manual"
    momentum: float = 0.0  # manual, sgd
    nesterov: bool = False  # manual, sgd
    weight_decay: float = 0.0  # every optimizer: adds weight_decay * p to the gradient
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # noqa: UP006 - adam
    eps: float = 1e-8  # adam


@dataclass
class DataConfig:
    kind: str = "inline"
    # inline: the points; y may be left null and computed as true_a * x + true_b
    x: Optional[List[float]] = None  # noqa: UP006, UP045
    y: Optional[List[float]] = None  # noqa: UP006, UP045
    true_a: Optional[float] = None  # noqa: UP045
    true_b: Optional[float] = None  # noqa: UP045
    # synthetic: n points, x ~ U(-1, 1), y = true_a * x + true_b + noise * N(0, 1)
    n: int = 100
    noise: float = 0.0
    seed: Optional[int] = None  # noqa: UP045 - null: the run's seed
    # csv: a file with numeric columns x and y
    path: Optional[str] = None  # noqa: UP045


@dataclass
class MlflowConfig:
    enabled: bool = True
    required: bool = True  # false: when the store cannot be reached, train with the CSV only
    tracking_uri: Optional[str] = None  # noqa: UP045 - null: sqlite:///<launch dir>/mlflow.db
    experiment: str = "runner"


@dataclass
class StopConfig:
    tol: Optional[float] = None  # noqa: UP045 - stop once |loss_k - loss_k-1| < tol; null: never


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    lr: float = 0.05
    epochs: int = 50
    device: str = "cpu"
    seed: int = 0
    zero_grad: bool = True  # false: gradients accumulate across epochs, as in seed 001
    chunk: int = 1000  # epochs of history kept on the device between two host copies
    print_every: int = 0  # print every N-th epoch's row as the notebooks do; 0: summary only
    check_grad: bool = False  # compare autograd's gradient with the analytic one every epoch
    check_grad_tol: float = 1e-4  # ... and fail the run when they differ by more (relative)
    plots: Optional[bool] = None  # noqa: UP045 - PNGs of the run; null: yes, unless in a sweep
    progress: bool = True  # a progress bar on a terminal, for runs that last a while
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)


ConfigStore.instance().store(name="schema", node=Config)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, value, "one of " + ", ".join(allowed))


def _finite(key: str, value: float | None) -> None:
    _require(value is not None and math.isfinite(value), key, value, "a finite number")


def validate(cfg: Config) -> None:
    """Raise ConfigError for the first setting a run cannot use. Types are Hydra's job."""
    _require(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", cfg.lr, "a finite number > 0")
    _require(cfg.epochs >= 1, "epochs", cfg.epochs, "an integer >= 1")
    _require(cfg.chunk >= 1, "chunk", cfg.chunk, "an integer >= 1")
    tol = cfg.stop.tol
    _require(tol is None or (math.isfinite(tol) and tol > 0), "stop.tol", tol, "null or > 0")
    _require(
        math.isfinite(cfg.check_grad_tol) and cfg.check_grad_tol > 0,
        "check_grad_tol", cfg.check_grad_tol, "a number > 0",
    )  # fmt: skip
    _require(
        not (cfg.check_grad and not cfg.zero_grad), "check_grad", True,
        "false with zero_grad=false (accumulated gradients are not the analytic gradient)",
    )  # fmt: skip
    _require(cfg.print_every >= 0, "print_every", cfg.print_every, "an integer >= 0 (0: off)")
    _one_of("device", cfg.device, DEVICES)
    _one_of("loss.name", cfg.loss.name, LOSS_NAMES)
    _one_of("optimizer.name", cfg.optimizer.name, OPTIMIZER_NAMES)
    _validate_optimizer(cfg.optimizer)
    _one_of("model.init", cfg.model.init, INITS)
    _finite("model.a", cfg.model.a)
    _finite("model.b", cfg.model.b)
    _require(
        cfg.model.bias or cfg.model.b == 0.0, "model.b", cfg.model.b, "0.0 when model.bias=false"
    )
    _require(bool(cfg.mlflow.experiment), "mlflow.experiment", cfg.mlflow.experiment, "a name")
    _validate_data(cfg.data)


def _validate_optimizer(opt: OptimizerConfig) -> None:
    _require(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "a number in [0, 1)")
    _require(
        not opt.nesterov or opt.momentum > 0, "optimizer.nesterov", True, "false when momentum=0"
    )
    _require(
        math.isfinite(opt.weight_decay) and opt.weight_decay >= 0,
        "optimizer.weight_decay", opt.weight_decay, "a number >= 0",
    )  # fmt: skip
    betas_ok = len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas)
    _require(betas_ok, "optimizer.betas", opt.betas, "two numbers in [0, 1)")
    _require(math.isfinite(opt.eps) and opt.eps > 0, "optimizer.eps", opt.eps, "a number > 0")
    if opt.name == "adam":
        _require(not opt.momentum and not opt.nesterov, "optimizer.momentum", opt.momentum,
                 "0 with adam (its betas play that part)")  # fmt: skip


def _validate_data(data: DataConfig) -> None:
    _one_of("data.kind", data.kind, DATA_KINDS)
    if data.kind == "inline":
        _require(bool(data.x), "data.x", data.x, "a non-empty list of numbers")
        for i, v in enumerate(data.x):
            _finite(f"data.x[{i}]", v)
        if data.y is None:
            _finite("data.true_a", data.true_a)  # y = true_a * x + true_b needs both
            _finite("data.true_b", data.true_b)
        else:
            _require(
                len(data.y) == len(data.x),
                "data.y",
                data.y,
                f"a list as long as data.x ({len(data.x)} values)",
            )
            for i, v in enumerate(data.y):
                _finite(f"data.y[{i}]", v)
    elif data.kind == "synthetic":
        _require(data.n >= 1, "data.n", data.n, "an integer >= 1")
        _finite("data.true_a", data.true_a)
        _finite("data.true_b", data.true_b)
        _require(
            math.isfinite(data.noise) and data.noise >= 0, "data.noise", data.noise, "a number >= 0"
        )
    else:  # csv: the file itself is checked when it is read (runner/data.py)
        _require(bool(data.path), "data.path", data.path, "the path of a CSV file")


def load(cfg: DictConfig) -> Config:
    """The composed config as a checked Config object."""
    conf = OmegaConf.to_object(cfg)
    assert isinstance(conf, Config)
    validate(conf)
    return conf
