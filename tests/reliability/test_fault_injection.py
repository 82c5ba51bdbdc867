"""kill -9 at seeded random moments, resume each time: the run ends bitwise equal to an uninterrupted one.

One kill lands for certain inside a checkpoint write (as soon as a ``step-NNNNNN.tmp`` folder
appears), then five at random points (after a random 1-2 new steps, then a random 0-0.15 s
more: in sampling, training, a metrics write or a checkpoint write). Every restart is the real
CLI with ``--resume``; the last one runs to the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import cli_env, comparable, rlgen_cli, rlgen_cmd, tiny_config, write_yaml

STEPS = 20
SEED = 14
RANDOM_KILLS = 5


def last_logged_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue  # a line being written right now
    return 0


def resumable_step(run: Path) -> int:
    """The step the next --resume starts after: the newest renamed checkpoint (all intact here)."""
    steps = [int(p.name[5:]) for p in (run / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")]
    return max(steps, default=0)


def logged_since(run: Path, since: float) -> bool:
    """metrics.jsonl was rewritten by the process started at ``since`` (resume replaces it by a rename)."""
    try:
        return (run / "metrics.jsonl").stat().st_ctime >= since
    except OSError:
        return False


def writing_checkpoint(run: Path, since: float) -> bool:
    """A checkpoint is being written by the process started at ``since`` (not a .tmp left by an earlier kill)."""
    for staging in (run / "checkpoints").glob("step-*.tmp"):
        try:
            if staging.stat().st_ctime >= since:
                return True
        except OSError:
            continue  # renamed or removed while we looked
    return False


def start(config: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(rlgen_cmd("train", str(config), "--resume"), env=cli_env(), cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, delay: float = 0.0, timeout: float = 300.0) -> bool:
    """SIGKILL ``proc`` (and its process group) ``delay`` s after ``ready()``; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_the_uninterrupted_run(tmp_path):
    straight_cfg = write_yaml(tiny_config(tmp_path, tmp_path / "straight", steps=STEPS), tmp_path / "straight.yaml")
    done = rlgen_cli("train", str(straight_cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "killed"
    config = write_yaml(tiny_config(tmp_path, run, steps=STEPS), tmp_path / "killed.yaml")
    rng = random.Random(SEED)
    # (new steps this restart logs, then seconds more): the 5 kills leave steps for the last restart
    moments = [(rng.randint(1, 2), rng.uniform(0.0, 0.15)) for _ in range(RANDOM_KILLS)]
    kills = []
    since = time.time() - 0.01
    proc = start(config, tmp_path)
    assert kill_when(proc, lambda: writing_checkpoint(run, since)), proc.stderr.read().decode()[-3000:]
    assert writing_checkpoint(run, since), "this kill was meant to land inside a checkpoint write"
    kills.append(("checkpoint write", 0.0, True))
    for ahead, delay in moments:
        target = resumable_step(run) + ahead
        since = time.time() - 0.01
        proc = start(config, tmp_path)
        assert kill_when(proc, lambda: logged_since(run, since) and last_logged_step(run) >= target, delay), \
            proc.stderr.read().decode()[-3000:]
        kills.append((target, round(delay, 3), writing_checkpoint(run, since)))

    final = start(config, tmp_path)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err.decode()[-3000:]
    print("kills (step, delay s, inside a checkpoint write):", kills)

    straight = tmp_path / "straight"
    a = load_file(str(straight / "policy" / "model.safetensors"))
    b = load_file(str(run / "policy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert [comparable(m) for m in lines(run / "metrics.jsonl")] == [comparable(m) for m in lines(straight / "metrics.jsonl")]
    assert [m["step"] for m in lines(run / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert lines(run / "samples.jsonl") == lines(straight / "samples.jsonl")
