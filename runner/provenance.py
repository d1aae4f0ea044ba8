"""The reproducibility record of a run: code, versions, machine, command line."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from runner.config import Config, plain
from runner.data import GRAIN_SIZE

PACKAGES = ("torch", "hydra-core", "mlflow", "pandas", "numpy")
# Settings that decide how a run is shown and where it is logged, not its numbers.
NOT_THE_NUMBERS = ("mlflow", "plots", "progress", "print_every", "chunk", "sweep")


def data_digest(x: np.ndarray, y: np.ndarray) -> str:
    """The data by content (hashed in place, without a copy), once per batch; beyond
    torch's grain size with the thread count, which then splits every sum."""
    digest = hashlib.sha256(np.ascontiguousarray(x))
    digest.update(np.ascontiguousarray(y))
    if len(y) > GRAIN_SIZE:
        digest.update(f"threads={torch.get_num_threads()}".encode())
    return digest.hexdigest()


def run_digest(conf: Config, data: str, device: torch.device) -> str:
    """What determines a run's numbers, as one digest: its settings (without where it is
    logged or how it is shown; the data by content, `data_digest`, not by path), the device
    it runs on, and the code: the runner's source (its git commit, and its uncommitted
    changes), torch's and numpy's versions."""
    settings = {k: v for k, v in plain(conf).items() if k not in NOT_THE_NUMBERS}
    settings["data"].pop("path")
    settings["device"] = device_name(device)
    what = [json.dumps(settings, sort_keys=True), data, source_version()]
    what += [_version("torch"), _version("numpy")]
    return hashlib.sha256("\n".join(what).encode()).hexdigest()[:32]


@functools.cache
def source_version() -> str:
    """The runner's code: its version, its git commit and a digest of its uncommitted
    changes where it is a git checkout."""
    state = git_state()
    if state is None:
        return _version("runner")
    commit, dirty = state
    if not dirty:
        return f"{_version('runner')} {commit}"
    here = Path(__file__).parent
    diff = subprocess.run(["git", "diff", "HEAD"], cwd=here, capture_output=True, timeout=5)
    return f"{_version('runner')} {commit} {hashlib.sha256(diff.stdout).hexdigest()}"


@functools.cache  # once per process: a sweep's jobs share it
def git_state() -> tuple[str, bool] | None:
    """(commit, dirty) of the runner's own source tree, when it is a git checkout."""
    here = Path(__file__).parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    return commit, bool(git("status", "--porcelain", "--untracked-files=no"))


@functools.cache
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def record(device: torch.device, command: str) -> dict[str, str]:
    """Tags for MLflow: with the seed and the config (logged as params) a run can be redone."""
    tags = {
        "runner.command": command,
        "runner.device": device_name(device),
        "runner.python": platform.python_version(),
    }
    tags |= {f"runner.version.{p}": _version(p) for p in PACKAGES}
    state = git_state()
    if state is not None:
        tags["mlflow.source.git.commit"] = state[0]
        tags["runner.git_dirty"] = str(state[1]).lower()
    return tags


@functools.cache
def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"
