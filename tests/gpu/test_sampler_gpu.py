"""The hf sampler on CUDA: greedy decoding agrees with the CPU's, and ``model.dtype: auto`` loads bf16 there."""

from __future__ import annotations

import pytest
import torch

import rlgen
from rlgen_plugins.samplers.hf import HFSampler

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (docs/gpu.md)")]

PROMPTS = [rlgen.Prompt(messages=[{"role": "user", "content": text}])
           for text in ("The cat sat on the", "Once upon a time there", "The weather today is", "She opened the door and")]
FIRST_TOKENS = 8


def generate(make_context, device: str, dtype: str, decode: str):
    sampler = HFSampler(HFSampler.Params(temperature=0.0, max_new_tokens=FIRST_TOKENS, device=device, decode=decode))
    sampler.setup(make_context("builtin:tiny-llama", model={"dtype": dtype}))
    rollout = sampler.generate(PROMPTS, group_size=2, seed=3)
    model_dtype = next(sampler._own_model().parameters()).dtype
    sampler.close()
    return rollout, model_dtype


@pytest.mark.parametrize("decode", ["loop", "generate"])
def test_greedy_on_cuda_equals_greedy_on_cpu(make_context, decode):
    cpu, _ = generate(make_context, "cpu", "float32", decode)
    gpu, dtype = generate(make_context, "cuda", "float32", decode)
    assert dtype == torch.float32
    # fp32 on both (TF32 off, tests/gpu/conftest.py): the same argmax at every step, log-probs to rounding
    assert torch.equal(gpu.completion_ids, cpu.completion_ids) and gpu.texts == cpu.texts
    torch.testing.assert_close(gpu.logprobs, cpu.logprobs, rtol=0, atol=1e-4)


def test_auto_dtype_is_bf16_on_cuda_and_still_decodes(make_context):
    rollout, dtype = generate(make_context, "auto", "auto", "loop")
    assert dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    assert rollout.batch_size == len(PROMPTS) * 2 and rollout.completion_mask.any(dim=1).all()
    assert torch.isfinite(rollout.logprobs[rollout.completion_mask]).all()
