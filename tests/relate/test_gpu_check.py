"""gpu_check's stages: a stage stopped at its limit takes its children with it (CPU-only)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rlgen_relate.lab.gpu_check import run_stage

# a stage that starts a grandchild (as the bench stage starts `rlgen bench`) and outlives its limit
SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only its parent has not read its status yet
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_a_stage_past_its_limit_is_stopped_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    t0 = time.perf_counter()
    result = run_stage("slow", [sys.executable, "-c", SPAWNER, str(pid_file)], dict(os.environ), tmp_path, limit_s=3)
    assert result["rc"] == "timeout" and time.perf_counter() - t0 < 30
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild), "the stage's child still runs beside the next stage"
    assert (tmp_path / "slow.log").exists()


def test_a_stage_that_ends_in_time_reports_its_exit_code(tmp_path: Path) -> None:
    ok = run_stage("ok", [sys.executable, "-c", "print('hello')"], dict(os.environ), tmp_path, limit_s=30)
    failed = run_stage("bad", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), tmp_path, limit_s=30)
    assert (ok["rc"], failed["rc"]) == (0, 3)
    assert (tmp_path / "ok.log").read_text().strip() == "hello"
