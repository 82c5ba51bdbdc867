"""One writer per run folder: a second train on a busy folder is refused, a dead holder's lock is taken over."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rlgen
from rlgen.run_lock import RunFolderInUse, hold

sys.path.insert(0, str(Path(__file__).parent))
from run_helpers import error_lines, metrics_steps, start_rlgen  # noqa: E402

HOLD_FOREVER = (
    "import sys, time; from pathlib import Path; from rlgen.run_lock import hold\n"
    "with hold(Path(sys.argv[1])):\n"
    "    print('held', flush=True); time.sleep(600)\n"
)


def holder_process(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_FOREVER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    proc = holder_process(tmp_path / "run")
    try:
        with pytest.raises(RunFolderInUse) as err:
            with hold(tmp_path / "run"):
                pass
        assert f"PID {proc.pid} on host {socket.gethostname()}" in str(err.value)
        assert "\n" not in str(err.value)
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_holder_is_taken_over_with_a_note(tmp_path, capsys):
    rlgen.configure_logging()
    proc = holder_process(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with hold(tmp_path / "run"):
        pass
    err = capsys.readouterr().err
    assert "took over the lock" in err and f"PID {proc.pid}" in err
    with hold(tmp_path / "run"):  # released cleanly this time: no note
        pass
    assert "took over" not in capsys.readouterr().err


def test_only_rank_0_takes_the_lock(tmp_path):
    proc = holder_process(tmp_path / "run")
    try:
        with hold(tmp_path / "run", rank=1):  # would raise if rank 1 tried
            pass
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_two_concurrent_trains_leave_one_clean_run_and_one_refusal(tmp_path):
    out = tmp_path / "same"
    procs = {seed: start_rlgen("train", "examples/tiny-grpo.yaml", "--set", f"run.output_dir={out}",
                               "--set", f"run.seed={seed}", "--set", "run.steps=2")
             for seed in (0, 1)}
    results = {seed: (p.wait(timeout=900), *p.communicate()) for seed, p in procs.items()}
    codes = sorted(rc for rc, _, _ in results.values())
    assert codes == [0, 2], {s: (rc, err[-2000:]) for s, (rc, _, err) in results.items()}
    winner = next(s for s, (rc, _, _) in results.items() if rc == 0)
    loser_err = results[1 - winner][2]
    lines = error_lines(loser_err)
    assert len(lines) == 1 and "is in use by another rlgen train (PID " in lines[0], loser_err[-2000:]
    assert "Traceback" not in loser_err
    assert metrics_steps(out) == [1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["seed"] == winner
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    assert (out / "policy" / "model.safetensors").is_file()
