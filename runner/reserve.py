"""A run's or a sweep's own directory, reserved before anything is written to it, and held
for as long as its command lives."""

from __future__ import annotations

import fcntl
import os
from datetime import datetime
from pathlib import Path

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from runner.config import ConfigError

_CLAIMED: dict[Path, int] = {}  # directory -> the open descriptor that holds its lock


def reserve_dir(
    cfg: DictConfig, parsed: list[Override], multirun: bool
) -> tuple[Path, Path | None]:
    """A directory of the run's (or the sweep's) own, created now: two runs started in the
    same second never share one. An explicit directory that holds a run is refused.
    Returns it and the topmost directory created for it (removed if the run never starts)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    path = Path(str(OmegaConf.select(cfg, key))).absolute()
    _check_writable(key, path)
    missing = [p for p in (*reversed(path.parents), path) if not p.exists()]
    if any(o.key_or_group == key for o in parsed):  # the user's own choice of directory
        if _holds_a_run(path, multirun):
            raise ConfigError(key, str(path), "a directory that holds no earlier run or sweep")
        path.mkdir(parents=True, exist_ok=True)
        if not _claim(path):  # two commands started together: the second sees the first here
            raise ConfigError(key, str(path), "a directory no other live run or sweep writes to")
        return path, missing[0] if missing else None
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()  # atomic: of two runs started in the same second, one gets it
            return candidate, missing[0] if missing else candidate
        except FileExistsError:
            continue
    raise ConfigError(key, str(path), "a pattern that leads to fewer than 10,000 runs a second")


def _claim(path: Path) -> bool:
    """An exclusive lock on the directory for as long as this process lives (the kernel
    drops it when the process ends, however it ends); False when another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _CLAIMED[path] = fd
    return True


def release(path: Path | None) -> None:
    """Let go of a directory this process claimed (a run that never started)."""
    if path is not None and (fd := _CLAIMED.pop(path, None)) is not None:
        os.close(fd)


def _holds_a_run(path: Path, multirun: bool) -> bool:
    if not path.is_dir():
        return False
    if multirun:
        return any(p.name.isdigit() or p.name in ("summary.csv", "multirun.yaml")
                   for p in path.iterdir())  # fmt: skip
    return any((path / name).exists() for name in (".hydra", "metrics.csv", "result.json"))


def _check_writable(key: str, path: Path) -> None:
    """The directory can be created and written; the probe leaves nothing behind."""
    existing = next(p for p in [path, *path.parents] if p.exists())
    if reason := unwritable(existing):
        raise ConfigError(key, str(path), f"a directory that can be written ({reason})")


def unwritable(directory: Path) -> str | None:
    """Why nothing can be created in an existing `directory`, or None (a probe, removed)."""
    if not directory.is_dir():
        return f"{directory} is a file"
    try:
        probe = directory / f".runner-probe-{os.getpid()}-{datetime.now().timestamp()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        return err.strerror or str(err)
    return None
