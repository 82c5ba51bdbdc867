"""gpu_check, CPU-only: a stage stopped at its limit takes its children with it; a detached check and collect."""

from __future__ import annotations

import os
import sys
import tarfile
import time
from pathlib import Path

from rlgen_relate.lab.gpu_check import archive, collect, detach, process_running, run_stage, without_options

# a stage that starts a grandchild (as the bench stage starts `rlgen bench`) and outlives its limit
SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def test_a_stage_past_its_limit_is_stopped_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    t0 = time.perf_counter()
    result = run_stage("slow", [sys.executable, "-c", SPAWNER, str(pid_file)], dict(os.environ), tmp_path, limit_s=3)
    assert result["rc"] == "timeout" and time.perf_counter() - t0 < 30
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while process_running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_running(grandchild), "the stage's child still runs beside the next stage"
    assert (tmp_path / "slow.log").exists()


def test_a_stage_that_ends_in_time_reports_its_exit_code(tmp_path: Path) -> None:
    ok = run_stage("ok", [sys.executable, "-c", "print('hello')"], dict(os.environ), tmp_path, limit_s=30)
    failed = run_stage("bad", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), tmp_path, limit_s=30)
    assert (ok["rc"], failed["rc"]) == (0, 3)
    assert (tmp_path / "ok.log").read_text().strip() == "hello"


# a stand-in for the check: writes a result at once and its done marker after a while
SLOW_CHECK = """
import json, sys, time
from pathlib import Path
results = Path(sys.argv[1])
(results / "summary.json").write_text("{}")
time.sleep(float(sys.argv[2]))
(results / "done.json").write_text(json.dumps({"rc": 0, "seconds": 1}))
"""


def test_a_detached_check_outlives_the_call_and_collect_returns_its_results(tmp_path: Path) -> None:
    results, first, second = tmp_path / "results", tmp_path / "out-1", tmp_path / "out-2"
    command = [sys.executable, "-c", SLOW_CHECK, str(results), "3"]
    # the first call returns before the check ends, with what it wrote so far
    assert detach(command, results, first, wait_s=0.5) == 3
    assert (first / "summary.json").is_file() and not (first / "done.json").exists()
    # the next call waits for the end and returns the check's exit code and every file
    assert collect(results, second, wait_s=30) == 0
    assert {p.name for p in second.iterdir()} == {"summary.json", "done.json", "gpu-check.log"}


def test_the_detached_command_line_drops_only_the_callers_options() -> None:
    argv = ["--detach", "--budget-s", "760", "--wait-s=585", "--out", "/root/out", "--tests-s", "90"]
    assert without_options(argv, {"--detach": 0, "--wait-s": 1, "--out": 1}) == ["--budget-s", "760", "--tests-s", "90"]


def test_the_archive_takes_reports_and_logs_but_no_weights_or_half_written_files(tmp_path: Path) -> None:
    work = tmp_path / "work"
    files = {
        "summary.json": b"{}", "demo/report.md": b"# report", "demo/plots/rewards.png": b"png",
        "demo/run/metrics.jsonl": b"{}\n", "demo/run/policy/model.safetensors": b"w",
        "demo/run/checkpoints/step-000001/trainer.json": b"{}", "cache/models/x/config.json": b"{}",
        "cache/models/.x.tmp-1/.tmpabc": b"half", "wheels/a.whl": b"zip", "demo/logs/huge.jsonl": b"x" * (5 * 2**20),
    }
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    archive(work, tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = set(tar.getnames())
        listed = tar.extractfile("left_out.txt").read().decode()
    assert names == {"summary.json", "demo/report.md", "demo/plots/rewards.png", "demo/run/metrics.jsonl", "left_out.txt"}
    assert listed.startswith("demo/logs/huge.jsonl (")


def test_collect_reports_a_check_that_crashed_at_once_instead_of_waiting(tmp_path: Path) -> None:
    results, first, second = tmp_path / "results", tmp_path / "out-1", tmp_path / "out-2"
    t0 = time.perf_counter()
    assert detach([sys.executable, "-c", "raise SystemExit('no wheels')"], results, first, wait_s=60) == 1
    # a later call, with only the pid file to go by, says the same without waiting
    assert collect(results, second, wait_s=60) == 1
    assert time.perf_counter() - t0 < 30
    assert "no wheels" in (second / "gpu-check.log").read_text()
