"""The ``hf`` sampler's decode loop against ``transformers.generate``: same tokens, same seeds, same ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import rlgen
from rlgen_plugins.samplers import HFSampler
from rlgen_plugins.samplers.decode_loop import unsupported_reason

PROMPTS = [
    rlgen.Prompt([{"role": "user", "content": "Write an ad for shoes"}], {"query": "shoes"}),
    rlgen.Prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write an ad for cheap flights to London"}], {"query": "flights"}),
    rlgen.Prompt([{"role": "user", "content": "Write an ad for coffee"}], {"query": "coffee"}),
]


def rollouts(make_context, model: Path | str, prompts, group: int, seed: int, **params) -> dict[str, rlgen.Rollout]:
    out = {}
    for decode in ("generate", "loop"):
        sampler = HFSampler(HFSampler.Params(decode=decode, **params))
        sampler.setup(make_context(str(model)))
        out[decode] = sampler.generate(prompts, group, seed=seed)
        assert out[decode].extras["decode"] == decode
    return out


def assert_same(a: rlgen.Rollout, b: rlgen.Rollout, logprob_atol: float = 1e-5) -> None:
    assert torch.equal(a.prompt_ids, b.prompt_ids)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert a.texts == b.texts and a.extras["finish_reason"] == b.extras["finish_reason"]
    assert torch.equal(a.token_offsets, b.token_offsets)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=logprob_atol, rtol=0)


def test_greedy_loop_equals_generate_on_left_padded_mixed_lengths(make_context, tiny_llama: Path) -> None:
    ro = rollouts(make_context, tiny_llama, PROMPTS, 2, seed=0, max_new_tokens=24, temperature=0)
    lengths = ro["loop"].prompt_mask.sum(1)
    assert lengths.min() < lengths.max(), "prompts of different lengths: some rows are left-padded"
    assert_same(ro["generate"], ro["loop"])


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.2},
        {"temperature": 1.0, "stop": ["\n"]},
        {"temperature": 1.0, "stop": ["\n"], "include_stop_str": True, "postprocess": ["strip_quotes"]},
    ],
    ids=["plain", "warped", "stop", "stop-include-postprocess"],
)
def test_seeded_sampling_is_the_same_on_both_paths(make_context, chatty_llama: Path, params) -> None:
    ro = rollouts(make_context, chatty_llama, PROMPTS, 6, seed=7, max_new_tokens=20, **params)
    assert_same(ro["generate"], ro["loop"])
    reasons = set(ro["loop"].extras["finish_reason"])
    assert "eos" in reasons, reasons  # rows that end early keep their end on the loop path
    if "stop" in params:
        assert "stop" in reasons, reasons


TEMPLATE = ("Query: bagels near me\nAd: Fresh Bagels Near You. Baked every morning.\n\n"
            "Query: bike repair\nAd: Same-Day Bike Repair. Flat tires fixed from $15.\n\n"
            "Query: dentist open saturday\nAd: Saturday Dental Care. New patients welcome, book online.\n\n"
            "Query: {}\nAd:")
TEMPLATED = [rlgen.Prompt([{"role": "user", "content": TEMPLATE.format(q)}], {"query": q})
             for q in ("shoes", "cheap flights to London", "coffee")]


@pytest.mark.parametrize("params", [{"temperature": 0}, {"temperature": 1.0, "stop": ["\n"]}], ids=["greedy", "sampled"])
def test_a_beginning_the_prompts_share_is_prefilled_once_with_the_same_result(make_context, chatty_llama: Path, params) -> None:
    from rlgen_plugins.prompt_prefix import MIN_SHARED_PREFIX, shared_prefix_length

    ro = rollouts(make_context, chatty_llama, TEMPLATED, 3, seed=5, max_new_tokens=16, **params)
    distinct = ro["loop"].prompt_ids[::3], ro["loop"].prompt_mask[::3]
    assert ro["loop"].prompt_mask.sum(1).unique().numel() > 1  # left-padded: the prefix starts at different columns
    assert shared_prefix_length(*distinct) >= MIN_SHARED_PREFIX + 20
    assert_same(ro["generate"], ro["loop"])


def test_loop_sample_depends_only_on_prompt_seed_and_index(make_context, chatty_llama: Path) -> None:
    sampler = HFSampler(HFSampler.Params(decode="loop", max_new_tokens=12))
    sampler.setup(make_context(str(chatty_llama)))
    whole = sampler.generate(PROMPTS, 4, seed=3)
    assert whole.texts == sampler.generate(PROMPTS, 4, seed=3).texts
    assert sampler.generate(PROMPTS[:1], 4, seed=3).texts == whole.texts[:4]
    chunked = HFSampler(HFSampler.Params(decode="loop", max_new_tokens=12, batch_size=3))  # chunks cut groups
    chunked.setup(make_context(str(chatty_llama)))
    assert chunked.generate(PROMPTS, 4, seed=3).texts == whole.texts


def test_unsupported_models_fall_back_to_generate_or_fail_when_loop_is_asked(make_context, tiny_llama: Path) -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32))
    assert "GPT2LMHeadModel" in unsupported_reason(gpt2)
    sampler = HFSampler(HFSampler.Params(decode="loop"))
    sampler.setup(make_context(str(tiny_llama)))
    with pytest.raises(rlgen.PluginError, match="decode is 'loop'.*GPT2LMHeadModel"):
        sampler._use_loop(gpt2)
    auto = HFSampler(HFSampler.Params())
    auto.setup(make_context(str(tiny_llama)))
    assert not auto._use_loop(gpt2)


@pytest.mark.slow
def test_greedy_loop_equals_generate_on_smollm2(make_context, cache_dir: Path) -> None:
    from rlgen_plugins.models import resolve_builtin_model

    model = resolve_builtin_model("smollm2-135m-instruct", cache_dir)
    prompts = [
        rlgen.Prompt([{"role": "user", "content": f'Write a search ad title for the query "{q}" (keyword: {k}).'}], {})
        for q, k in [("cheap train tickets to berlin", "train tickets berlin"), ("custom t-shirt printing", "t-shirt printing")]
    ]
    ro = rollouts(make_context, model, prompts, 5, seed=0, max_new_tokens=32, temperature=0)
    assert_same(ro["generate"], ro["loop"], logprob_atol=1e-4)
    # sampled from a 49k vocabulary, rows ending at different steps (they leave the loop's batch): the
    # draw must not hinge on the last bits of the logits, so the two paths still emit the same tokens
    for seed in (1, 2):
        ro = rollouts(make_context, model, prompts, 5, seed=seed, max_new_tokens=32, temperature=1.0)
        assert len(set(ro["loop"].completion_mask.sum(1).tolist())) > 1
        assert_same(ro["generate"], ro["loop"], logprob_atol=1e-4)
