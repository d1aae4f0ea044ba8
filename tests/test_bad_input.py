"""Every bad input a new user might type: one line, exit code 2, nothing written.

The observed behaviour is also the table in docs/faults.md: this test fails when the
two disagree. Regenerate it with `RUNNER_WRITE_DOCS=1 pytest tests/test_bad_input.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import REPO, run_cli

# (what a user typed, files the command finds in its directory)
CSV = {
    "missing.csv": None,
    "no_y.csv": "x,z\n1,2\n",
    "words.csv": "x,y\n1,2\n2,abc\n",
    "nan.csv": "x,y\n1,2\nnan,3\n",
    "empty_rows.csv": "x,y\n",
    "ragged.csv": "x,y\n1,2\n2,\n",
}
BAD_INPUTS: list[tuple[str, ...]] = [
    ("optimizer=adamw",),
    ("lrr=0.1",),
    ("+newkey=1",),
    ("lr=abc",),
    ("lr=0",),
    ("lr=-1",),
    ("lr=nan",),
    ("lr=inf",),
    ("lr=${lr}",),
    ("epochs=0",),
    ("epochs=1.5",),
    ("device=tpu",),
    ("data=csv",),
    *((("data=csv", f"data.path={name}")) for name in CSV),
    ("data=seed_003", "data.x=[1,2,3]"),
    ("hydra.run.dir=/proc/runner-out",),
    ("hydra.run.dir=/etc/hostname/out",),
    ("optimizer._target_=torch.optim.Adam",),
    ("+hydra.callbacks.spy._target_=os.system",),
    ("lr=0.1,0.2",),
    ("-m", "lr=0.1,0"),
    ("mlflow.tracking_uri=http://127.0.0.1:9",),
]

DOC = REPO / "docs" / "faults.md"
BEGIN = "<!-- bad-input table: written by tests/test_bad_input.py -->\n"
END = "<!-- end of bad-input table -->\n"
TABLE_HEAD = "| command | exit | stderr |\n|---|---|---|\n"


def _observe(args: tuple[str, ...], home: Path) -> str:
    for name, text in CSV.items():
        if text is not None:
            (home / name).write_text(text)
    before = sorted(home.iterdir())
    done = run_cli(*args, cwd=home)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()  # one line, so no traceback
    assert line.startswith("runner: error: ") and " is not allowed: " in line
    assert sorted(home.iterdir()) == before  # no outputs/, no mlflow.db, nothing
    shown = line.replace(str(home), ".").replace("|", "\\|")
    return f"| `python -m runner {' '.join(args)}` | {done.returncode} | `{shown}` |\n"


def test_bad_inputs_table(tmp_path: Path) -> None:
    rows = []
    for i, args in enumerate(BAD_INPUTS):
        home = tmp_path / str(i)
        home.mkdir()
        rows.append(_observe(args, home))
    doc = DOC.read_text()
    before, rest = doc.split(BEGIN)
    after = rest.split(END)[1]
    fresh = before + BEGIN + TABLE_HEAD + "".join(rows) + END + after
    if os.environ.get("RUNNER_WRITE_DOCS"):
        DOC.write_text(fresh)
    assert doc == fresh, "docs/faults.md is stale: run RUNNER_WRITE_DOCS=1 pytest " + __file__


@pytest.mark.parametrize("name", ["lr=0", "optimizer=adamw"])
def test_bad_input_leaves_an_existing_store_untouched(tmp_path: Path, name: str) -> None:
    from mlflow import MlflowClient

    store = tmp_path / "store.db"
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.create_experiment("runner")
    client.create_run(experiment)
    before = store.read_bytes()
    done = run_cli(f"mlflow.tracking_uri=sqlite:///{store}", name, cwd=tmp_path)
    assert done.returncode == 2
    assert store.read_bytes() == before
    assert len(client.search_runs([experiment])) == 1
