"""runner/provenance.py: the digest that says two runs compute the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from support import make_config

from runner.data import load_arrays
from runner.provenance import data_digest, git_state, run_digest, source_version

CPU = torch.device("cpu")


def _digest(*overrides: str, base: Path | None = None) -> str:
    conf = make_config(*overrides)
    return run_digest(
        conf, data_digest(*load_arrays(conf.data, conf.seed, base or Path.cwd())), CPU
    )


def test_the_digest_follows_the_numbers_not_how_they_are_shown(tmp_path: Path) -> None:
    base = _digest("lr=0.1")
    assert base == _digest("lr=0.1") and len(base) == 32
    shown_only = [
        "chunk=7",
        "plots=false",
        "progress=false",
        "print_every=5",
        "mlflow.log_every=10",
        "mlflow.experiment=other",
        "sweep.rerun=true",
    ]
    for shown in shown_only:
        assert _digest("lr=0.1", shown) == base, shown
    for numbers in ("lr=0.2", "epochs=51", "optimizer=sgd", "seed=1", "data=seed_003"):
        assert _digest("lr=0.1", numbers) != base, numbers


def test_the_data_counts_by_content_not_by_path(tmp_path: Path) -> None:
    for name in "ab":
        (tmp_path / name).write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "c").write_text("x,y\n1,2\n3,5\n")
    a, b, c = (_digest("data=csv", f"data.path={n}", base=tmp_path) for n in "abc")
    assert a == b != c
    x, y = np.float32([[1, 3]]), np.float32([2, 4])
    assert run_digest(make_config("data=csv", "data.path=a"), data_digest(x, y), CPU) == a


def test_the_code_counts_its_commit_and_its_uncommitted_changes() -> None:
    version, state = source_version().split(), git_state()
    assert version[0] == "0.1.0"
    if state is None:  # an installed wheel: its version alone
        assert len(version) == 1
    else:  # a git checkout: the commit, and a digest of `git diff HEAD` when it is dirty
        assert version[1] == state[0] and len(version) == 2 + state[1]
