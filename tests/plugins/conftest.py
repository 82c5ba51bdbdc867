"""Fixtures for the standard plugins: the builtin tiny Llama, a chat-trained copy, run contexts.

Models are built into ``RLGEN_CACHE_DIR`` (the checkout's ``.cache/rlgen`` under the root
conftest), so only the first test session pays for building them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

import rlgen
from rlgen.config import load_config
from rlgen.discovery import registry as discover
from rlgen_plugins.models import default_cache_dir, resolve_builtin_model
from rlgen_plugins.models.cache import materialise, spec_key

sys.path.insert(0, str(Path(__file__).parent))
from chatty import train_chatty  # noqa: E402

CHATTY_SPEC = {"name": "chatty-tiny-llama", "version": 1, "steps": 60, "seed": 0}


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    assert os.environ.get("RLGEN_CACHE_DIR"), "tests must not write the user's ~/.cache (see tests/conftest.py)"
    return default_cache_dir()


@pytest.fixture(scope="session")
def tiny_llama(cache_dir: Path) -> Path:
    return resolve_builtin_model("tiny-llama", cache_dir)


@pytest.fixture(scope="session")
def chatty_llama(cache_dir: Path, tiny_llama: Path) -> Path:
    """tiny-llama taught to give short answers that end with EOS (some quoted, some on two lines)."""
    spec = {**CHATTY_SPEC, "source": tiny_llama.name}
    target = cache_dir / "test-models" / f"chatty-{spec_key(spec)}"
    return materialise(target, spec, lambda folder: train_chatty(tiny_llama, folder, steps=spec["steps"], seed=spec["seed"]))


@pytest.fixture(scope="session")
def registry() -> Any:
    return discover()


@pytest.fixture(scope="session")
def make_context(registry: Any, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """RunContext for a model spec (plugins are set up against it as in a run)."""

    def make(model: str, **config: Any) -> rlgen.RunContext:
        raw = {"model": {"path": model}, "data": {"path": "prompts.jsonl"}, "rewards": [{"name": "len"}], **config}
        return rlgen.RunContext(
            config=load_config(raw), registry=registry, output_dir=tmp_path_factory.mktemp("run"),
            cache_dir=cache_dir, seed=0,
        )

    return make
