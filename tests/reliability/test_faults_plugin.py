"""A plugin raising mid-run: one console line (plugin, hook, step), exit 1, the traceback in RUN/error.log,
the last checkpoint intact and resumable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from rlgen.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from run_helpers import ROOT, error_lines, metrics_steps, run_rlgen, toy_config, use_toy_plugins  # noqa: E402

HERE = Path(__file__).parent


def check_fault_report(stderr: str, run: Path) -> None:
    lines = error_lines(stderr)
    assert lines == [f"error: reward 'test.faulty' raised ValueError in score at step 3: no length table entry "
                     f"for call 3; traceback in {run / 'error.log'}"], stderr[-3000:]
    assert "Traceback" not in stderr
    logged = (run / "error.log").read_text()
    assert "step 3: reward 'test.faulty' raised in score" in logged
    assert "Traceback (most recent call last)" in logged and "faulty_reward.py" in logged
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]
    assert metrics_steps(run) == [1, 2]
    assert not (run / "policy").exists()


def test_a_reward_fault_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    use_toy_plugins(monkeypatch)
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("RLGEN_PLUGINS", "toy_plugins,faulty_reward")
    cfg = toy_config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["rewards"].append({"name": "test.faulty", "weight": 0.1})
    cfg.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("FAULTY_REWARD_AT", "3")
    assert main(["train", str(cfg)]) == 1
    check_fault_report(capsys.readouterr().err, tmp_path / "run")
    monkeypatch.delenv("FAULTY_REWARD_AT")
    assert main(["train", str(cfg), "--resume"]) == 0
    assert metrics_steps(tmp_path / "run") == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_reward_fault_in_the_tiny_grpo_run_leaves_a_resumable_checkpoint(tmp_path):
    raw = yaml.safe_load((ROOT / "examples" / "tiny-grpo.yaml").read_text())
    raw["data"]["path"] = str(ROOT / "examples" / "data" / "ad_prompts.jsonl")
    raw["rewards"].append({"name": "test.faulty", "weight": 0.1})
    raw["run"].update(steps=4, checkpoint_every=2, output_dir=str(tmp_path / "run"))
    raw["callbacks"] = []
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = {"RLGEN_PLUGINS": "faulty_reward", "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    failed = run_rlgen("train", str(cfg), FAULTY_REWARD_AT="3", **env)
    assert failed.returncode == 1, failed.stderr[-3000:]
    check_fault_report(failed.stderr, tmp_path / "run")
    fixed = run_rlgen("train", str(cfg), "--resume", **env)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert metrics_steps(tmp_path / "run") == [1, 2, 3, 4]
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
