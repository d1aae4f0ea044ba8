"""Processes a test started are ended when it ends, passed, failed or timed out; a fresh
MLflow store for the tests that need one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import STARTED, kill_tree


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # MLflow creates its tables
    return path


@pytest.fixture
def sqlite_uri(tmp_path: Path, _empty_store: Path) -> str:
    """An empty SQLite store of MLflow's schema, tmp_path/mlflow.db: a copy of one made once
    per session (MLflow takes about a second to create and migrate the tables)."""
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            kill_tree(process.pid)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def hydra_as_fresh() -> Iterator[None]:
    """Hydra's own test apps and suites expect a process where no version_base was set yet
    (as in Hydra's own test runs); the runner's gate sets 1.3 in the tests before them."""
    from hydra import version
    from hydra.version import VersionBase

    base = VersionBase.instance()
    before = base.version_base
    base.setbase(version.__compat_version__)
    yield
    base.version_base = before
