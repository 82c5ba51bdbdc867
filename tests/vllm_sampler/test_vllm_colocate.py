"""The ``vllm`` sampler in colocate mode against a real (CPU) vLLM engine: hf-identical greedy rollouts, weight sync.

One engine serves the whole module (starting one takes tens of seconds here): first the
greedy rollout is compared with the ``hf`` sampler's field by field, then a trainer step is
synced into the engine and its log-probs are compared with the trainer's own.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import torch

vllm = pytest.importorskip("vllm")

import rlgen  # noqa: E402
from rlgen_plugins.models import load_causal_lm  # noqa: E402
from rlgen_plugins.models.tiny_llama import ensure_tiny_llama  # noqa: E402
from rlgen_plugins.samplers import HFSampler  # noqa: E402
from rlgen_plugins.samplers.vllm import VLLMSampler, logprobs_mode  # noqa: E402
from torch_trainer import TorchPG, completion_logprobs  # noqa: E402

TEXTS = [
    "Write an ad for shoes", "Be brief.|Write an ad for cheap flights to London", "Write an ad for coffee", "Hello",
    "Tell me about the best laptop deals", "Write an ad for a phone with a great camera and long battery", "Why?", "Write",
]
PROMPTS = [
    rlgen.Prompt(
        ([{"role": "system", "content": t.split("|")[0]}] if "|" in t else []) + [{"role": "user", "content": t.split("|")[-1]}],
        {"query": t, "k": k},
    )
    for k, t in enumerate(TEXTS)
]
# greedy; strip_quotes removes whole tokens of the chatty model's quoted answers, so masks get holes
PARAMS = {"temperature": 0, "max_new_tokens": 10, "postprocess": ["strip_quotes"]}
GROUP = 2


@pytest.fixture(scope="module")
def engine(make_context, vllm_chatty: Path) -> Iterator[VLLMSampler]:
    sampler = VLLMSampler(VLLMSampler.Params(**PARAMS))
    sampler.setup(make_context(str(vllm_chatty)))
    yield sampler
    sampler.close()


def test_registered_and_available(registry) -> None:
    assert registry.samplers["vllm"] is VLLMSampler
    assert VLLMSampler.unavailable_reason() is None


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "penalty", "mode", "exact"),
    [
        (0.7, 0, 1.0, 1.0, "processed_logprobs", True),  # log_softmax(logits / T), nothing else applied
        (0.0, 50, 0.9, 1.3, "raw_logprobs", True),  # greedy: hf's log_softmax(logits)
        (1.0, 50, 1.0, 1.0, "raw_logprobs", True),  # T = 1: raw is before the truncation, as hf's
        (0.7, 50, 1.0, 1.0, "processed_logprobs", False),  # no vLLM mode is hf's: the sampled distribution
    ],
)
def test_logprobs_mode_matches_hf_where_vllm_can(temperature, top_k, top_p, penalty, mode, exact) -> None:
    assert logprobs_mode(temperature, top_k, top_p, penalty) == (mode, exact)


def test_unsupported_cpu_head_size_fails_at_setup(make_context, cache_dir: Path) -> None:
    # builtin:tiny-llama's shape (4 heads of 16): vLLM's CPU kernels start at 32
    heads16 = ensure_tiny_llama(cache_dir, num_attention_heads=4, num_key_value_heads=2)
    sampler = VLLMSampler(VLLMSampler.Params(**PARAMS))
    with pytest.raises(rlgen.PluginError, match=r"attention head size 16, which vLLM's CPU backend does not support"):
        sampler.setup(make_context(str(heads16)))
    assert sampler._engine is None


def test_greedy_rollout_equals_the_hf_samplers(engine: VLLMSampler, make_context, vllm_chatty: Path) -> None:
    hf = HFSampler(HFSampler.Params(**PARAMS))
    hf.setup(make_context(str(vllm_chatty)))
    want = hf.generate(PROMPTS, GROUP, seed=7)
    got = engine.generate(PROMPTS, GROUP, seed=7)

    assert got.texts == want.texts
    for field in ("completion_ids", "completion_mask", "token_offsets", "group", "prompt_ids", "prompt_mask"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert got.prompt_texts == want.prompt_texts and got.meta == want.meta
    for key in ("raw_texts", "finish_reason", "sample_seeds"):
        assert got.extras[key] == want.extras[key], key
    assert got.temperature == want.temperature
    torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-4, rtol=0)
    # the comparison covered the paths that matter: EOS and length ends, tokens removed by post-processing
    reasons = Counter(got.extras["finish_reason"])
    assert reasons["eos"] > 0 and reasons["length"] > 0, reasons
    real = got.completion_ids != hf.tokenizer.pad_token_id
    assert real.sum() > got.completion_mask.sum(), "post-processing removed no token"
    assert got.extras["logprobs_exact"] is True


def test_trainer_step_reaches_the_engine(engine: VLLMSampler, vllm_chatty: Path) -> None:
    trainer = TorchPG(TorchPG.Params(learning_rate=2e-3), model=load_causal_lm(vllm_chatty))
    first = engine.sync_weights(trainer)
    n_tensors = len(trainer.model.state_dict())
    assert first["sync_tensors"] == n_tensors and first["sync_s"] > 0 and first["sync_mb"] > 0

    before = engine.generate(PROMPTS, GROUP, seed=3)
    with torch.no_grad():
        trainer_before = completion_logprobs(trainer.model, before)
    mask = before.completion_mask
    torch.testing.assert_close(before.logprobs[mask], trainer_before[mask], atol=1e-4, rtol=0)

    # one policy-gradient step: push groups 0, 2, ... up and the others down
    adv = torch.where(before.group % 2 == 0, 1.0, -1.0)[:, None] * mask.float()
    trainer.step(before, adv)
    metrics = engine.sync_weights(trainer)
    assert metrics["sync_tensors"] == n_tensors and trainer.exports == 2

    after = engine.generate(PROMPTS, GROUP, seed=3)
    with torch.no_grad():
        trainer_after = completion_logprobs(trainer.model, after)
        trainer_moved = completion_logprobs(trainer.model, before)
    mask_a = after.completion_mask
    # the engine now samples from the trained policy ...
    torch.testing.assert_close(after.logprobs[mask_a], trainer_after[mask_a], atol=1e-4, rtol=0)
    # ... and on completions it repeats, its log-probs moved exactly as the trainer's did
    same = [i for i in range(before.batch_size) if torch.equal(before.completion_ids[i], after.completion_ids[i])]
    assert same, "the step changed every greedy completion; lower the learning rate"
    rows = torch.tensor(same)
    m = mask[rows]
    engine_delta = (after.logprobs[rows] - before.logprobs[rows])[m]
    trainer_delta = (trainer_moved[rows] - trainer_before[rows])[m]
    torch.testing.assert_close(engine_delta, trainer_delta, atol=1e-4, rtol=0)
    assert trainer_delta.abs().max() > 1e-2, "the step barely moved the policy; the comparison would prove little"
