"""Fixtures for the standard plugins: the builtin tiny Llama, a chat-trained copy, run contexts.

Models are built into ``RLGEN_CACHE_DIR`` (the checkout's ``.cache/rlgen`` under the root
conftest), so only the first test session pays for building them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlgen_plugins.models import resolve_builtin_model

sys.path.insert(0, str(Path(__file__).parent))
from chatty import chatty_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(cache_dir: Path) -> Path:
    return resolve_builtin_model("tiny-llama", cache_dir)


@pytest.fixture(scope="session")
def chatty_llama(cache_dir: Path, tiny_llama: Path) -> Path:
    """tiny-llama taught to give short answers that end with EOS (some quoted, some on two lines)."""
    return chatty_model(cache_dir, tiny_llama, "chatty-tiny-llama")
