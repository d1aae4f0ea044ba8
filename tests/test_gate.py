"""No command line runs code the project's configs do not name: a table of attacks, each
run as a user would type it, each refused in one line before anything is created.

The observed behaviour is the attack table in docs/faults.md: this test fails when the two
disagree. Regenerate it with `RUNNER_WRITE_DOCS=1 pytest tests/test_gate.py`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from support import REPO, each_in_a_home, refused_in_one_line, update_doc_table

MARK = "MARK"  # replaced by the marker file's path: the attack would create it


class _Opener:
    """Unpickling this calls open(path, "w"): what a loaded pickle can do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


CALLBACK = ["+hydra.callbacks.s._target_=builtins.open", f"+hydra.callbacks.s.file={MARK}",
            "+hydra.callbacks.s.mode=w"]  # fmt: skip
EVIL_EXPERIMENT = f"""# @package _global_
hydra:
  callbacks:
    s:
      _target_: builtins.open
      file: {MARK}
      mode: w
"""
EVIL_LOGGING = f"""version: 1
handlers:
  evil:
    (): builtins.open
    file: {MARK}
    mode: w
root:
  handlers: [evil]
"""
EVIL_LAUNCHER = f"""_target_: builtins.open
file: {MARK}
mode: w
"""
ATTACKS: list[tuple[str, ...]] = [
    ("-cn", "config", *CALLBACK),
    ("--config-dir", "EMPTY", *CALLBACK),
    (*CALLBACK,),
    ("-m", *CALLBACK, "lr=0.1,0.2"),
    ("--cfg", "job", *CALLBACK),
    ("hydra.searchpath=[file://EVIL]", "experiment=evil"),
    ("--config-dir", "EVIL", "experiment=evil"),
    ("-m", "--config-dir", "EVIL", "experiment=evil", "lr=0.1,0.2"),
    ("--info", "--config-dir", "EVIL", "experiment=evil"),
    ("-cp", "EVIL", "-cn", "evil"),
    ("--experimental-rerun", "EVIL/config.pickle"),
    ("--config-dir", "EVIL", "hydra/job_logging=evil"),
    ("+hydra.job_logging.handlers.evil.class=logging.FileHandler",
     f"+hydra.job_logging.handlers.evil.filename={MARK}"),
    ("-m", "--config-dir", "EVIL", "hydra/launcher=evil", "lr=0.1,0.2"),
    ("-m", "hydra.launcher._target_=builtins.open", f"+hydra.launcher.file={MARK}", "lr=1,2"),
    ("+optimizer._target_=builtins.open", f"+optimizer.file={MARK}"),
    ("-m", "hydra/launcher=submitit_local", f"hydra.launcher.setup=[touch {MARK}]", "lr=1,2"),
    ("+hydra.job.env_set.PYTHONPATH=EVIL",),
    ("hydra.searchpath=[pkg://EVIL]",),
]  # fmt: skip


def _files(home: Path, marker: Path) -> None:
    """EVIL: a config dir whose files name code; EMPTY: an empty one."""
    evil = home / "EVIL"
    for name, text in [("experiment/evil.yaml", EVIL_EXPERIMENT), ("evil.yaml", EVIL_EXPERIMENT),
                       ("hydra/job_logging/evil.yaml", EVIL_LOGGING),
                       ("hydra/launcher/evil.yaml", EVIL_LAUNCHER)]:  # fmt: skip
        (evil / name).parent.mkdir(parents=True, exist_ok=True)
        (evil / name).write_text(text.replace(MARK, str(marker)))
    (evil / "config.pickle").write_bytes(pickle.dumps(_Opener(str(marker))))
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (home / "EMPTY").mkdir()


def _observe(attack: tuple[str, ...], home: Path) -> str:
    marker = home.parent / f"{home.name}.marker"  # outside home: `nothing written` sees all
    _files(home, marker)
    # Relative paths (the command runs in home), but for file:// search paths.
    args = [a.replace(MARK, f"../{marker.name}").replace("file://EVIL", f"file://{home}/EVIL")
            for a in attack]  # fmt: skip
    try:
        line = refused_in_one_line(args, home)
    finally:
        assert not marker.exists(), attack
    shown = line.replace(f"../{marker.name}", "MARK")
    command = " ".join(attack).replace("|", "\\|")
    return f"| `python -m runner {command}` | no | `{shown}` |\n"


@pytest.mark.slow
def test_attacks_are_refused_before_anything_runs(tmp_path: Path) -> None:
    rows = each_in_a_home(tmp_path, ATTACKS, _observe)
    head = "| command (EVIL: a config dir that names code) | marker created | stderr |\n"
    update_doc_table(REPO / "docs" / "faults.md", "attack", head + "|---|---|---|\n", rows)
