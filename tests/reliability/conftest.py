"""A tiny real run (builtin tiny Llama, hf sampler, DeepSpeed GRPO on gloo) to damage, attack and kill.

Every test here starts from a run folder of a few steps with a checkpoint after each one, so a
damaged newest checkpoint always has an intact one behind it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlgen.config import load_config
from rlgen.loop import RunResult, train

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ["shoes", "cheap flights", "coffee", "laptops", "tents", "bikes"]


def tiny_config(data_dir: Path, output_dir: Path, steps: int = 2) -> dict[str, Any]:
    data = data_dir / "queries.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"query": q}) + "\n" for q in QUERIES))
    return {
        "model": {"path": "builtin:tiny-llama"},
        "data": {"path": str(data), "prompt_template": "Write an ad for {query}", "prompts_per_step": 2},
        "group_size": 2,
        "sampler": {"name": "hf", "params": {"max_new_tokens": 8}},
        "rewards": [{"name": "relate.length", "weight": 1.0}],
        "advantage": {"name": "grpo"},
        "trainer": {"name": "grpo", "params": {
            "learning_rate": 1e-3, "beta": 0.0, "micro_batch_size": 4, "zero_stage": 2, "checkpoint_export": False}},
        "callbacks": [{"name": "samples", "params": {"every": 1, "show": 0}}],
        "run": {"steps": steps, "seed": 3, "output_dir": str(output_dir), "checkpoint_every": 1, "keep_checkpoints": 3},
    }


def run_tiny(raw: dict[str, Any], *, steps: int, resume: bool = False) -> RunResult:
    raw = {**raw, "run": {**raw["run"], "steps": steps}}
    return train(load_config(raw), resume=resume, progress=False)


def copy_run(src: Path, dst: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run folder and the config pointing at it (as when a run folder is shared)."""
    shutil.copytree(src, dst)
    return {**raw, "run": {**raw["run"], "output_dir": str(dst)}}


def write_yaml(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RLGEN_CACHE_DIR", str(ROOT / ".cache" / "rlgen"))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # an in-process run before may have set them
    return env


def rlgen_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlgen.cli", *args]


def rlgen_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(rlgen_cmd(*args), env=cli_env(), cwd=cwd, capture_output=True, text=True, timeout=600)


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything but wall-clock readings (time/*, *_s, *_seconds)."""
    return {k: v for k, v in metrics.items() if not (k.startswith("time/") or k.endswith(("_s", "_seconds")))}


@pytest.fixture(scope="package")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """(config, folder) of an uninterrupted 3-step run with checkpoints after steps 1, 2 and 3."""
    base = tmp_path_factory.mktemp("straight")
    raw = tiny_config(base, base / "run", steps=3)
    run_tiny(raw, steps=3)
    return raw, base / "run"
