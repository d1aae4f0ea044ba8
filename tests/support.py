"""Helpers shared by the tests: configs built with Hydra's compose(), runs of the real loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir

from runner.cli import CONF_DIR
from runner.config import Config, load

REPO = Path(__file__).resolve().parent.parent


def make_config(*overrides: str) -> Config:
    """The Config that `python -m runner OVERRIDES...` would run."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return load(compose("config", overrides=list(overrides)))


def train_history(*overrides: str) -> tuple[pd.DataFrame, object]:
    """The whole per-epoch history of a run (no sinks), and its Setup after training."""
    from runner.app import build
    from runner.loop import train

    conf = make_config(*overrides)
    s = build(conf, Path.cwd())
    chunks = train(
        s.model, s.loss_fn, s.optimizer, s.x, s.y, conf.epochs, conf.zero_grad, conf.chunk
    )
    return pd.concat(list(chunks), ignore_index=True), s


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS...` in a subprocess, as a user types it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
