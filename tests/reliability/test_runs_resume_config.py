"""--resume refuses a config that changes the run's trajectory; harmless keys may change; an override is recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from rlgen.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from run_helpers import error_lines, metrics_steps, toy_config, use_toy_plugins  # noqa: E402


@pytest.fixture
def started_run(tmp_path, monkeypatch):
    """A toy run of 4 steps, checkpointed at step 2 and exported at step 4."""
    use_toy_plugins(monkeypatch)
    cfg = toy_config(tmp_path)
    assert main(["train", str(cfg)]) == 0
    return cfg, tmp_path / "run"


@pytest.mark.parametrize("override, shown", [
    ("run.seed=4", "run.seed: 3 -> 4"),
    ("group_size=8", "group_size: 4 -> 8"),
    ("trainer.params.lr=0.5", "trainer.params.lr: 0.3 -> 0.5"),
    ("rewards.0.weight=2.0", "rewards.0.weight: 1.0 -> 2.0"),
])
def test_a_trajectory_change_is_refused_naming_the_key(started_run, capsys, override, shown):
    cfg, run = started_run
    stored = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", "--set", "run.steps=6", "--set", override]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and shown in lines[0] and "--allow-config-change" in lines[0], lines
    assert "run.steps" not in lines[0].split("trajectory:")[1].split("(")[0]  # the harmless change is not blamed
    assert (run / "config.yaml").read_text() == stored
    assert metrics_steps(run) == [1, 2, 3, 4]
    assert not (run / "config_changes.json").exists()


def test_raising_steps_resumes_and_is_recorded(started_run):
    cfg, run = started_run
    assert main(["train", str(cfg), "--resume", "--set", "run.steps=6", "--set", "run.keep_checkpoints=3"]) == 0
    assert metrics_steps(run) == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["steps"] == 6
    [entry] = json.loads((run / "config_changes.json").read_text())
    assert entry["changes"] == {"run.keep_checkpoints": {"old": 2, "new": 3}, "run.steps": {"old": 4, "new": 6}}
    assert entry["allow_config_change"] is False and entry["resumed_after_step"] == 4


def test_allow_config_change_overrides_and_records_it(started_run, capsys):
    cfg, run = started_run
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", "--allow-config-change", "--set", "run.steps=6",
                 "--set", "run.seed=9"]) == 0
    assert "resuming with a changed trajectory" in capsys.readouterr().err
    [entry] = json.loads((run / "config_changes.json").read_text())
    assert entry["allow_config_change"] is True
    assert entry["changes"]["run.seed"] == {"old": 3, "new": 9}
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["seed"] == 9
    assert metrics_steps(run) == [1, 2, 3, 4, 5, 6]
