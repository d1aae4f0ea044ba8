"""The allow-list of Hydra's settings (runner/hydra_settings.py): the runner's own configs
pass it for every launcher and sweeper, anything else that reaches the `hydra` node is
named, and each allowed key keeps to its range."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from runner import gate, hydra_settings, overrides
from runner.config import ConfigError


@pytest.mark.parametrize("launcher", hydra_settings.LAUNCHERS)
def test_every_launcher_the_runner_offers_passes_as_configured(launcher: str) -> None:
    if launcher in overrides.EXTRAS and not overrides.launcher_installed(launcher):
        pytest.skip(f"hydra/launcher={launcher} needs the [{overrides.EXTRAS[launcher]}] extra")
    for search in ("grid", "optuna_lr"):
        cfg = gate.compose_checked([f"hydra/launcher={launcher}", f"search={search}"], {})
        overrides.check_hydra_node(cfg, [])  # no false refusal of the runner's own settings


def test_a_leaf_added_anywhere_in_the_hydra_node_is_named() -> None:
    cfg = gate.compose_checked([], {})
    reference = overrides._runner_own("batched", "grid")
    with open_dict(cfg):
        cfg.hydra.job.env_set = {"PYTHONPATH": "/elsewhere"}
        cfg.hydra.job_logging.handlers.file.mode = "w"
        cfg.hydra.launcher.max_batch = 64  # the user's to set
    found = [key for key, _, _ in hydra_settings.foreign(cfg, reference)]
    assert found == ["hydra.job.env_set.PYTHONPATH", "hydra.job_logging.handlers.file.mode"]


def test_a_removed_leaf_is_named_too() -> None:
    cfg = gate.compose_checked([], {})
    with open_dict(cfg):
        del cfg.hydra.job_logging.handlers["file"]
    found = {
        key for key, _, _ in hydra_settings.foreign(cfg, overrides._runner_own("batched", "grid"))
    }
    assert "hydra.job_logging.handlers.file.filename" in found


BAD = [
    ("hydra.launcher.n_jobs", 0), ("hydra.launcher.n_jobs", "2"), ("hydra.launcher.n_jobs", True),
    ("hydra.launcher.prefer", "xyz"), ("hydra.launcher.pre_dispatch", "abc"),
    ("hydra.launcher.batch_size", 0), ("hydra.launcher.timeout", -1.0),
    ("hydra.launcher.max_batch", 0), ("hydra.sweeper.max_batch_size", -1),
    ("hydra.sweeper.n_trials", 0), ("hydra.sweeper.report_every", 0),
    ("hydra.launcher.partition", "gpu\n#SBATCH --wrap=rm"), ("hydra.launcher.comment", "a\nb"),
    ("hydra.launcher.ray.remote.num_cpus", float("nan")), ("hydra.sweeper.study_name", ""),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), BAD)
def test_each_allowed_key_keeps_to_its_range(key: str, value: object) -> None:
    assert not hydra_settings.SETTINGS[key].ok(value)


GOOD = [
    ("hydra.launcher.n_jobs", -1), ("hydra.launcher.n_jobs", 4),
    ("hydra.launcher.prefer", "threads"),
    ("hydra.launcher.pre_dispatch", "3*n_jobs"), ("hydra.launcher.batch_size", "auto"),
    ("hydra.launcher.partition", "gpu-a100"), ("hydra.launcher.constraint", "v100&ib"),
    ("hydra.sweeper.max_batch_size", None), ("hydra.launcher.ray.init.address", "head:6379"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), GOOD)
def test_each_allowed_key_takes_what_its_tool_takes(key: str, value: object) -> None:
    assert hydra_settings.SETTINGS[key].ok(value)


def test_oc_env_reads_only_the_runner_s_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    cfg = OmegaConf.create({"a": "${oc.env:MLFLOW_TRACKING_PASSWORD}", "b": "${oc.env:RAY_ADDRESS}",
                            "c": "${oc.env:UNSET_VARIABLE_OF_NOBODY,null}"})  # fmt: skip
    assert cfg.b == "head:6379"
    with pytest.raises(Exception, match=r"oc\.env reads only RAY_ADDRESS") as caught:
        _ = cfg.a
    assert "hunter2" not in str(caught.value)
    with pytest.raises(Exception, match=r"oc\.env reads only"):
        _ = cfg.c


def test_a_config_dir_with_a_hydra_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "hydra" / "launcher").mkdir(parents=True)
    with pytest.raises(ConfigError, match="without a hydra/ folder"):
        gate.check(["--config-dir", str(tmp_path), "lr=0.1"], reserve=False)


def test_a_config_dir_is_read_whole_in_a_moment_or_refused(tmp_path: Path) -> None:
    from runner.overrides import PRESET_ENTRIES, presets_problem

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nlr: 0.1\n")
    hidden = tmp_path / ".venv"  # a project's own folders are not presets: not walked
    hidden.mkdir()
    for i in range(PRESET_ENTRIES + 1):
        (hidden / str(i)).touch()
    assert presets_problem(tmp_path) is None
    (tmp_path / "experiment" / "alias.yaml").write_text("a: &a [1]\nb: *a\n")
    assert "without YAML aliases" in (presets_problem(tmp_path) or "")
