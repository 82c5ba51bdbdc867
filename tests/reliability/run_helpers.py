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


TOY_PLUGINS = ROOT / "tests" / "core"


def use_toy_plugins(monkeypatch) -> None:
    """Let the in-process ``rlgen`` command find the core's toy plugins (a real tiny policy, no model library)."""
    monkeypatch.syspath_prepend(str(TOY_PLUGINS))
    monkeypatch.setenv("RLGEN_PLUGINS", "toy_plugins")
    monkeypatch.setenv("RLGEN_DISABLE_PLUGIN_AUTOLOAD", "1")


def toy_config(folder: Path, name: str = "run.yaml", **run) -> Path:
    """A run config of the toy plugins (see tests/core/toy_plugins.py) written to ``folder/name``."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"query": f"q{i}"}) + "\n" for i in range(6)))
    raw = {
        "model": {"path": "unused"},
        "data": {"path": str(data), "prompt_template": "write for {query}", "prompts_per_step": 3},
        "group_size": 4,
        "sampler": {"name": "toy.sampler", "params": {"max_new_tokens": 8}},
        "rewards": [{"name": "toy.count", "weight": 1.0, "params": {"letter": "a"}}],
        "advantage": {"name": "toy.centred"},
        "trainer": {"name": "toy.trainer", "params": {"lr": 0.3}},
        "run": {"steps": 4, "seed": 3, "output_dir": str(folder / "run"), "checkpoint_every": 2, **run},
    }
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
