"""Helpers of the run-level reliability tests: the `rlgen` command in a subprocess, with the test environment.

Imported by the ``test_runs_*``, ``test_validate_*`` and ``test_faults_*`` modules (after a
``sys.path`` insert of this folder), so they do not depend on a conftest of this folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RLGEN = [sys.executable, "-m", "rlgen.cli"]


def rlgen_env(**extra: str) -> dict[str, str]:
    """The environment of a test subprocess: this one's (caches, offline hub, one thread) plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    return env


def start_rlgen(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.Popen:
    return subprocess.Popen([*RLGEN, *args], cwd=cwd, env=rlgen_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_rlgen(*args: str, cwd: Path = ROOT, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RLGEN, *args], cwd=cwd, env=rlgen_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The ``error: ...`` lines the CLI printed (log lines and progress bars aside)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
