"""A smoke test of scripts/bench.py at tiny sizes (timings are the script's job, not ours)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support import REPO


@pytest.mark.slow
def test_bench_runs_at_tiny_sizes(tmp_path: Path) -> None:
    cases = "floor,run50,bare_big,config_error,sweep_small"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--cases",
            cases,
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(tmp_path / "bench.csv")
    assert sorted(table["case"]) == sorted(cases.split(","))
    assert (table["seconds"] > 0).all()
    report = (tmp_path / "bench.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| case"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["case", "what", "seconds"]
    assert "50 epochs: runner / floor" in report
