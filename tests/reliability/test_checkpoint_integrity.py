"""A damaged newest checkpoint is named (folder and file), skipped, and the run resumes from the one before.

Damage is what a full disk, an interrupted copy or a power loss leaves: a truncated or changed
file, a missing one, unreadable JSON. The resumed run must still equal the uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
from safetensors.torch import load_file

import rlgen
from conftest import comparable, copy_run, rlgen_cli, run_tiny, write_yaml


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def tear_json(path: Path) -> None:
    path.write_text(path.read_text()[:10])


DAMAGE = {
    "truncated model states": ("trainer/deepspeed/state/mp_rank_00_model_states.pt", truncate),
    "changed optimizer states": ("trainer/deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt", flip_byte),
    "truncated plugin states": ("plugins.pt", truncate),
    "missing rng file": ("trainer/deepspeed/rng_rank0.pt", lambda p: p.unlink()),
    "torn trainer.json": ("trainer/trainer.json", tear_json),
    "torn loop.json": ("loop.json", tear_json),
    "torn manifest": ("manifest.json", tear_json),
}


def metrics_of(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def weights_of(run: Path) -> dict:
    return load_file(str(run / "policy" / "model.safetensors"))


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(straight_run, tmp_path, kind):
    raw, run = straight_run
    rel, damage = DAMAGE[kind]
    cfg = copy_run(run, tmp_path / "run", raw)
    latest = tmp_path / "run" / "checkpoints" / "step-000003"
    damage(latest / rel)

    with structlog.testing.capture_logs() as logs:
        resumed = run_tiny(cfg, steps=3, resume=True)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["folder"] == str(latest)
    assert any(p.startswith(f"{rel}:") for p in warnings[0]["problems"]), warnings[0]["problems"]
    # resumed from step 2, redid step 3, and ended where the uninterrupted run did
    assert [m["step"] for m in resumed.metrics] == [3]
    assert [comparable(m) for m in metrics_of(tmp_path / "run")] == [comparable(m) for m in metrics_of(run)]
    want, got = weights_of(run), weights_of(tmp_path / "run")
    assert want.keys() == got.keys() and all(want[k].equal(got[k]) for k in want)


def test_no_intact_checkpoint_exits_2_naming_each_damaged_one(straight_run, tmp_path):
    raw, run = straight_run
    cfg = copy_run(run, tmp_path / "run", raw)
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-000001", "step-000002", "step-000003"]
    for ckpt in ckpts:
        truncate(ckpt / "trainer" / "deepspeed" / "state" / "mp_rank_00_model_states.pt")
    config = write_yaml(cfg, tmp_path / "run.yaml")

    proc = rlgen_cli("train", str(config), "--resume", "--set", "run.steps=4", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = proc.stderr[proc.stderr.index("error: "):]
    assert "no intact checkpoint to resume from" in error
    for ckpt in ckpts:
        assert f"{ckpt}: trainer/deepspeed/state/mp_rank_00_model_states.pt:" in error


def test_torn_last_metrics_line_is_trimmed_on_resume(straight_run, tmp_path):
    raw, run = straight_run
    cfg = copy_run(run, tmp_path / "run", raw)
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as fh:
        fh.write('{"step": 4, "reward/total/me')  # power loss in the middle of step 4's line

    with structlog.testing.capture_logs() as logs:
        resumed = run_tiny(cfg, steps=4, resume=True)
    trimmed = [e for e in logs if e["log_level"] == "warning" and "torn" in e["event"]]
    assert len(trimmed) == 1 and trimmed[0]["file"] == str(metrics) and trimmed[0]["line"] == 4
    assert resumed.last_step == 4
    assert [m["step"] for m in metrics_of(tmp_path / "run")] == [1, 2, 3, 4]


def test_a_damaged_line_before_the_last_is_an_error_naming_file_and_line(straight_run, tmp_path):
    raw, run = straight_run
    cfg = copy_run(run, tmp_path / "run", raw)
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], lines[1][:20], lines[2]]) + "\n")
    with pytest.raises(rlgen.RlgenError, match=f"{metrics}:2: not a metrics line"):
        run_tiny(cfg, steps=4, resume=True)
