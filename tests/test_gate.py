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
# Presets that stay in the runner's own groups, each reaching Hydra's node another way.
OPENER_LOGGING = f"""# @package _global_
hydra:
  job_logging:
    handlers:
      evil:
        (): builtins.open
        file: {MARK}
        mode: w
"""
FILE_LOGGING = f"""# @package _global_
hydra:
  job_logging:
    handlers:
      file:
        filename: {MARK}
        mode: w
"""
JOB_ENV = """# @package hydra.job
env_set:
  PYTHONPATH: EVIL
"""
SECRET_NAME = """# @package _global_
mlflow:
  experiment: ${oc.env:MLFLOW_TRACKING_PASSWORD}
"""
SAMPLER_CODE = """# @package _global_
hydra:
  sweeper:
    sampler:
      _target_: builtins.print
      name: tpe
"""
# Six lines that expand to 531,441 nodes as the config composes (and more with a line more).
BOMB = "# @package _global_\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcde", "bcdef", strict=True)
)
PRESETS = {"experiment/evil.yaml": EVIL_EXPERIMENT, "experiment/sampler.yaml": SAMPLER_CODE,
           "experiment/opener.yaml": OPENER_LOGGING,
           "experiment/logfile.yaml": FILE_LOGGING, "data/jobenv.yaml": JOB_ENV,
           "experiment/secret.yaml": SECRET_NAME}  # fmt: skip

ATTACKS: list[tuple[str, ...]] = [
    ("-cn", "config", *CALLBACK),
    ("--config-dir", "EMPTY", *CALLBACK),
    (*CALLBACK,),
    ("-m", *CALLBACK, "lr=0.1,0.2"),
    ("--cfg", "job", *CALLBACK),
    ("hydra.searchpath=[file://PRESETS]", "experiment=evil"),
    ("--config-dir", "PRESETS", "experiment=evil"),
    ("-m", "--config-dir", "PRESETS", "experiment=evil", "lr=0.1,0.2"),
    ("--info", "--config-dir", "PRESETS", "experiment=evil"),
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
    # issue 25, 1: a search space that names Hydra's settings, or values the gate never saw
    ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
     "hydra.sweeper.params={+hydra.job.env_set.PYTHONPATH:EVIL}", "lr=0.1,0.2"),
    ("-m", f"hydra.sweeper.params={{+hydra.job_logging.handlers.file.filename:{MARK}}}",
     "seed=0,1"),
    ("-m", "hydra.sweeper.params={lr:-1}", "seed=0,1"),
    ("-m", "hydra.sweeper.params={chunk:0}", "seed=0,1"),
    ("-m", "hydra.sweeper.params={epochs:0}", "seed=0,1"),
    ("-m", "hydra.sweeper.params={batch_size:0}", "seed=0,1"),
    # 2: a preset of the runner's own groups that reaches Hydra's logging or environment
    ("--config-dir", "PRESETS", "experiment=logfile"),
    ("-m", "--config-dir", "PRESETS", "data=seed_002,jobenv"),
    # 3: a swept option whose preset names code
    ("-m", "hydra/launcher=basic", "--config-dir", "PRESETS", "experiment=seed_002,opener"),
    # 4: sweeps too big to expand, or that never end
    ("-m", "lr=range(0.1,inf,0.1)"),
    ("-m", "lr=range(0.1,1,nan)"),
    ("-m", "lr=range(0.0000001,1,0.0000001)"),
    ("-m", "epochs=range(1,1000000000000)"),
    ("-m", "seed=range(0,99999)"),
    # 8: secrets
    ("-m", "search=optuna_lr",
     "hydra.sweeper.storage=postgresql+psycopg2://alice:S3cr3t@db.example/optuna"),
    ("mlflow.experiment=${oc.env:MLFLOW_TRACKING_PASSWORD}",),
    ("--config-dir", "PRESETS", "experiment=secret"),
    # 9: one line, not a traceback
    ("-m", "hydra.output_subdir=a,b"),
    ("-m", "hydra/launcher=joblib", "hydra.launcher.pre_dispatch=abc", "lr=0.1,0.2"),
    ("-m", "hydra/launcher=joblib", "hydra.launcher.batch_size=0", "lr=0.1,0.2"),
    ("-m", "hydra/launcher=joblib", "hydra.launcher.prefer=xyz", "lr=0.1,0.2"),
    ("-m", "search=optuna_lr", "+hydra.sweeper.sampler.n_startup_trials=abc"),
    ("-m", "search=optuna_lr", "hydra.sweeper.storage=sqlite:///mlflow.db"),
    ("-m", "lr=interval(0.1,0.2)"),
    ("optimizer=sgd", "optimizer.weight_decay=1e308"),
    # 10: silent wrong results
    ("-m", "hydra.sweeper.max_batch_size=-1", "lr=0.1,0.2"),
    ("-m", "hydra.sweep.subdir=", "lr=0.1,0.2"),
    ("-m", "hydra.sweep.subdir=../../../escape_${hydra.job.num}", "lr=0.1,0.2"),
    ("-m", "lr=range(1,0.5,0.1)"),
    # beyond the findings: other ways in, tried as an attacker would
    ("-m", "--config-dir", "PRESETS", "search=optuna_lr", "experiment=sampler"),
    ("--config-dir", "BOMB", "experiment=bomb"),
    ("--config-dir", "/", "lr=0.1"),
    ("hydra.searchpath=[file://EVIL]", "lr=0.1"),
    ("hydra.run.dir=${oc.env:HOME}/out",),
    ("-m", "search=optuna_lr", "hydra.sweeper.storage=sqlite:////etc/passwd"),
    ("-m", "experiment=glob(*)"),
    ("-m", "--config-dir", "PRESETS", "hydra.sweeper.params={experiment:opener}", "lr=0.1,0.2"),
]  # fmt: skip
# A few rows run as a user types them, in a process of their own; the rest through the
# same entry point in this process (tests/support.py: run_in_process).
SUBPROCESS = {ATTACKS[2], ATTACKS[19], ATTACKS[25]}


def _files(home: Path, marker: Path) -> None:
    """EVIL: a config dir whose files name code; PRESETS: presets of the runner's own groups
    that reach Hydra's node; EMPTY: an empty one."""
    evil = home / "EVIL"
    files = {"EVIL/experiment/evil.yaml": EVIL_EXPERIMENT, "EVIL/evil.yaml": EVIL_EXPERIMENT,
             "EVIL/hydra/job_logging/evil.yaml": EVIL_LOGGING,
             "EVIL/hydra/launcher/evil.yaml": EVIL_LAUNCHER,
             **{f"PRESETS/{name}": text for name, text in PRESETS.items()},
             "BOMB/experiment/bomb.yaml": BOMB}  # fmt: skip
    for name, text in files.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text.replace(MARK, f"../{marker.name}"))
    (evil / "config.pickle").write_bytes(pickle.dumps(_Opener(str(marker))))
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (home / "EMPTY").mkdir()


def _observe(attack: tuple[str, ...], home: Path) -> str:
    marker = home.parent / f"{home.name}.marker"  # outside home: `nothing written` sees all
    _files(home, marker)
    # Relative paths (the command runs in home), but for file:// search paths.
    args = [a.replace(MARK, f"../{marker.name}").replace("file://", f"file://{home}/")
            for a in attack]  # fmt: skip
    try:
        line = refused_in_one_line(args, home, in_process=attack not in SUBPROCESS)
    finally:
        assert not marker.exists(), attack
    assert "S3cr3t" not in line and "hunter2" not in line  # a secret is never shown
    shown = line.replace(f"../{marker.name}", "MARK")
    command = " ".join(attack).replace("|", "\\|")
    return f"| `python -m runner {command}` | no | `{shown}` |\n"


@pytest.mark.slow
def test_attacks_are_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")  # never shown, stored or named
    rows = each_in_a_home(tmp_path, ATTACKS, _observe)
    head = "| command (EVIL: a config dir that names code) | marker created | stderr |\n"
    update_doc_table(REPO / "docs" / "faults.md", "attack", head + "|---|---|---|\n", rows)
