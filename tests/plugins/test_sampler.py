"""The ``hf`` sampler on real tiny Llamas: masks, EOS, offsets, log-probs, seeds, stops, post-processors, sync."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import torch

import rlgen
from rlgen.config import validate_params
from rlgen_plugins.models import load_causal_lm
from rlgen_plugins.samplers import HFSampler, PostProcessStep, apply_chain, build_postprocessor

PROMPTS = [
    rlgen.Prompt([{"role": "user", "content": "Write an ad for shoes"}], {"query": "shoes"}),
    rlgen.Prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write an ad for cheap flights to London"}], {"query": "flights"}),
    rlgen.Prompt([{"role": "user", "content": "Write an ad for coffee"}], {"query": "coffee"}),
]


def make_sampler(make_context, model: Path | str, **params) -> HFSampler:
    sampler = HFSampler(HFSampler.Params(**params))
    sampler.setup(make_context(str(model)))
    return sampler


def stable_decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=True).rstrip("\ufffd")


def real(ro: rlgen.Rollout, i: int) -> list[int]:
    return ro.completion_ids[i][ro.completion_mask[i]].tolist()


@pytest.fixture(scope="module")
def chatty_rollout(request) -> Iterator[tuple[HFSampler, rlgen.Rollout]]:
    make_context = request.getfixturevalue("make_context")
    sampler = make_sampler(make_context, request.getfixturevalue("chatty_llama"), max_new_tokens=20)
    yield sampler, sampler.generate(PROMPTS, 6, seed=11)


def test_registered(registry) -> None:
    assert registry.samplers["hf"] is HFSampler


def test_rollout_contract_mask_eos_and_offsets(chatty_rollout) -> None:
    sampler, ro = chatty_rollout
    tok = sampler.tokenizer
    b = len(PROMPTS) * 6
    assert ro.batch_size == b and ro.group.tolist() == [k for k in range(3) for _ in range(6)]
    assert [m["query"] for m in ro.meta] == [p.meta["query"] for p in PROMPTS for _ in range(6)]
    # prompts: chat template, left padding, the rendered text is what the ids say
    for i in range(b):
        pm = ro.prompt_mask[i]
        assert not pm[pm.int().argmax():].logical_not().any(), "prompt padding must all be on the left"
        assert tok.decode(ro.prompt_ids[i][pm].tolist()) == ro.prompt_texts[i]
        assert ro.prompt_texts[i].endswith("<|im_start|>assistant\n")
    reasons = Counter(ro.extras["finish_reason"])
    assert reasons["eos"] > 0 and reasons["length"] > 0, reasons
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for i in range(b):
        mask, ids = ro.completion_mask[i], ro.completion_ids[i]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any(), "without post-processing the mask is a prefix"
        assert (ids[n:] == pad).all()
        body = ids[:n].tolist()
        if ro.extras["finish_reason"][i] == "eos":
            assert body[-1] == eos and eos not in body[:-1]  # up to and including the first EOS
            assert tuple(ro.token_offsets[i, n - 1].tolist()) == (len(ro.texts[i]),) * 2  # EOS shows no text
        else:
            assert n == 20 and eos not in body
        assert ro.texts[i] == tok.decode(body, skip_special_tokens=True)
        for k in range(n):  # offsets: the text up to token k is exactly what tokens 0..k decode to
            a, e = ro.token_offsets[i, k].tolist()
            assert 0 <= a <= e <= len(ro.texts[i])
            assert ro.texts[i][:e] == stable_decode(tok, body[: k + 1])
        assert (ro.token_offsets[i, n:] == 0).all()
    assert (ro.logprobs[~ro.completion_mask] == 0).all() and (ro.logprobs[ro.completion_mask] < 0).all()


def test_offsets_locate_words_in_generated_text(chatty_rollout) -> None:
    sampler, ro = chatty_rollout
    tok = sampler.tokenizer
    checked = 0
    for i, text in enumerate(ro.texts):
        words = [w for w in text.split() if w.isalpha() and len(w) >= 3]
        if not words:
            continue
        start = text.index(words[0])
        spans = [[] for _ in ro.texts]
        spans[i] = [(start, start + len(words[0]))]
        hit = ro.spans_to_tokens(spans)
        marked = tok.decode(ro.completion_ids[i][hit[i]].tolist())
        assert words[0] in marked and len(marked) <= len(words[0]) + 8
        checked += 1
    assert checked >= 5


def test_logprobs_are_the_policy_log_probs_under_the_temperature(make_context, chatty_llama: Path) -> None:
    sampler = make_sampler(make_context, chatty_llama, max_new_tokens=12, temperature=0.7, top_k=50)
    ro = sampler.generate(PROMPTS, 2, seed=5)
    model = load_causal_lm(chatty_llama)
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], dim=1)
    attn = torch.cat([ro.prompt_mask, torch.ones_like(ro.completion_mask)], dim=1).long()
    pos = (attn.cumsum(1) - 1).clamp(min=0)  # left padding: positions count real tokens only
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    p = ro.prompt_ids.shape[1]
    lp = torch.log_softmax(logits[:, p - 1 : -1] / 0.7, dim=-1).gather(2, ro.completion_ids[..., None])[..., 0]
    torch.testing.assert_close(ro.logprobs[ro.completion_mask], lp[ro.completion_mask], atol=2e-4, rtol=0)
    assert ro.temperature == 0.7


def test_sampling_is_determined_by_the_seed_per_sample(make_context, chatty_llama: Path) -> None:
    sampler = make_sampler(make_context, chatty_llama, max_new_tokens=12)
    a = sampler.generate(PROMPTS, 4, seed=3)
    b = sampler.generate(PROMPTS, 4, seed=3)
    c = sampler.generate(PROMPTS, 4, seed=4)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.equal(a.logprobs, b.logprobs)
    assert a.texts != c.texts
    assert len(set(a.texts[:4])) > 1, "samples of one prompt must differ"
    # a sample depends on (seed, prompt index, sample index), not on how the batch is cut
    chunked = make_sampler(make_context, chatty_llama, max_new_tokens=12, batch_size=5).generate(PROMPTS, 4, seed=3)
    assert chunked.texts == a.texts
    alone = sampler.generate(PROMPTS[:1], 4, seed=3)
    assert alone.texts == a.texts[:4]


def test_left_padding_does_not_change_greedy_output(make_context, tiny_llama: Path) -> None:
    sampler = make_sampler(make_context, tiny_llama, max_new_tokens=10, temperature=0)
    alone = sampler.generate(PROMPTS[:1], 1, seed=0)
    batched = sampler.generate(PROMPTS[:2], 1, seed=0)  # prompt 0 is the shorter one: left-padded here
    assert batched.prompt_mask[0].logical_not().any()
    n = int(alone.completion_mask[0].sum())
    assert batched.completion_ids[0, :n].tolist() == alone.completion_ids[0, :n].tolist()
    torch.testing.assert_close(batched.logprobs[0, :n], alone.logprobs[0, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_end_completions(make_context, chatty_llama: Path, include: bool) -> None:
    sampler = make_sampler(make_context, chatty_llama, max_new_tokens=20, stop=["\n"], include_stop_str=include)
    ro = sampler.generate(PROMPTS, 8, seed=2)
    tok = sampler.tokenizer
    stopped = [i for i, r in enumerate(ro.extras["finish_reason"]) if r == "stop"]
    assert stopped, "the chat-trained model writes two-line answers; some must hit the stop string"
    for i in range(ro.batch_size):
        full = tok.decode(real(ro, i), skip_special_tokens=True)
        if i in stopped:
            assert ro.texts[i].endswith("\n") if include else "\n" not in ro.texts[i]
            assert full.startswith(ro.texts[i] if include else ro.texts[i] + "\n")
            assert "\n" not in tok.decode(real(ro, i)[:-1])  # the last token completed the stop string
        else:
            assert "\n" not in ro.texts[i] and ro.texts[i] == full


def test_postprocessors_keep_offsets_true_to_the_text(make_context, chatty_llama: Path) -> None:
    sampler = make_sampler(
        make_context, chatty_llama, max_new_tokens=20, postprocess=["first_line", {"name": "strip_quotes"}]
    )
    ro = sampler.generate(PROMPTS, 8, seed=2)
    tok = sampler.tokenizer
    changed = removed = 0
    for i, text in enumerate(ro.texts):
        raw = ro.extras["raw_texts"][i]
        assert "\n" not in text and text == text.strip() and not (text[:1] in "\"'" and text[:1] and text[-1:] == text[:1])
        assert text in raw
        changed += text != raw
        mask = ro.completion_mask[i]
        spans = [tuple(s) for s, m in zip(ro.token_offsets[i].tolist(), mask.tolist()) if m and s[1] > s[0]]
        # every character of the final text belongs to a kept token, in order, without overlap
        covered = [False] * len(text)
        for a, e in spans:
            for c in range(a, e):
                assert not covered[c]
                covered[c] = True
        assert all(covered)
        for (a, e), tid in zip(ro.token_offsets[i].tolist(), ro.completion_ids[i].tolist()):
            piece = tok.decode([tid], skip_special_tokens=True)
            if e > a and "\ufffd" not in piece:
                # a kept token's span is (part of) what that token wrote; an undecodable byte
                # sequence shows up as U+FFFD on the token that completes it
                assert text[a:e].replace("\ufffd", "") in piece
        # generated tokens whose text the post-processors cut away are masked out
        n = ro.extras["lengths"][i]
        assert not mask[n:].any()
        removed += int(n - mask[:n].sum())
    assert changed > 0 and removed > 0


def test_postprocessor_spans() -> None:
    def run(steps, text):
        start, end = apply_chain([build_postprocessor(PostProcessStep.model_validate(s)) for s in steps], text)
        return text[start:end]

    assert run(["first_line"], "\n  \nHello there\nsecond") == "Hello there"
    assert run([{"name": "first_line", "params": {"skip_blank": False}}], "\nHello") == ""
    assert run(["strip"], "  hi \n") == "hi"
    assert run(["strip_quotes"], ' "«Buy now!»" ') == "Buy now!"
    assert run(["strip_quotes"], '"Buy" now') == '"Buy" now'
    assert run([{"name": "strip_quotes", "params": {"unmatched": True}}], '"Buy now') == "Buy now"
    assert run([{"name": "max_chars", "params": {"n": 3}}, "strip"], "a bcdef") == "a b"
    assert run(["first_line", "strip_quotes"], '"Fast shoes."\nMore text') == "Fast shoes."


def test_postprocess_config_errors_name_the_step(registry) -> None:
    with pytest.raises(rlgen.ConfigError, match="plugin 'hf'.*unknown post-processor 'last_line'"):
        validate_params(HFSampler, {"postprocess": ["last_line"]}, origin="cfg", key="sampler", name="hf")
    with pytest.raises(rlgen.ConfigError, match="post-processor 'max_chars': n"):
        validate_params(HFSampler, {"postprocess": [{"name": "max_chars", "params": {"n": -1}}]}, origin="cfg", key="sampler", name="hf")
    with pytest.raises(rlgen.ConfigError, match="unknown key 'sampler.params.temprature'"):
        validate_params(HFSampler, {"temprature": 1.0}, origin="cfg", key="sampler", name="hf")


class HoldingTrainer(rlgen.Trainer):
    """A trainer that only holds a policy: the sampler's side of the weight-sync contract, nothing else."""

    name = "test.holding"

    def __init__(self, model: torch.nn.Module, share: bool) -> None:
        super().__init__()
        self.model, self.share = model, share

    def step(self, rollout, advantages):
        return {}

    def policy_module(self):
        return self.model if self.share else None

    def export_weights(self):
        yield from ((k, v.detach().clone()) for k, v in self.model.state_dict().items())


def test_sync_shares_the_trainer_module_without_loading_a_copy(make_context, chatty_llama: Path, monkeypatch) -> None:
    import rlgen_plugins.samplers.hf as hf

    sampler = make_sampler(make_context, chatty_llama, max_new_tokens=12)
    before = sampler.generate(PROMPTS, 2, seed=1)  # loads the sampler's own copy
    trainer = HoldingTrainer(load_causal_lm(chatty_llama).train(), share=True)

    def no_second_copy(*args, **kwargs):
        raise AssertionError("the sampler loaded a model although the trainer shares its module")

    monkeypatch.setattr(hf, "load_causal_lm", no_second_copy)
    fresh = make_sampler(make_context, chatty_llama, max_new_tokens=12)
    metrics = fresh.sync_weights(trainer)  # before any generate: must not load anything
    assert metrics["sync_shared"] == 1.0 and fresh._model is trainer.model
    same = fresh.generate(PROMPTS, 2, seed=1)
    assert same.texts == before.texts
    assert trainer.model.training, "a shared module goes back to training mode after generating"
    with torch.no_grad():  # the trainer updates its module: the very next generate sees it
        trainer.model.model.embed_tokens.weight.mul_(-1.0)
    assert fresh.generate(PROMPTS, 2, seed=1).texts != before.texts


def test_sync_copies_exported_weights(make_context, chatty_llama: Path, tiny_llama: Path) -> None:
    sampler = make_sampler(make_context, tiny_llama, max_new_tokens=12)  # starts from the random model
    random_texts = sampler.generate(PROMPTS, 2, seed=1).texts
    trainer = HoldingTrainer(load_causal_lm(chatty_llama), share=False)
    metrics = sampler.sync_weights(trainer)
    assert metrics["sync_shared"] == 0.0 and metrics["sync_tensors"] > 0
    assert sampler._model is not trainer.model
    for (name, a), b in zip(sampler._model.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(a, b), name
    reference = make_sampler(make_context, chatty_llama, max_new_tokens=12).generate(PROMPTS, 2, seed=1)
    synced = sampler.generate(PROMPTS, 2, seed=1)
    assert synced.texts == reference.texts != random_texts

    class Partial(HoldingTrainer):
        def export_weights(self):
            yield from list(super().export_weights())[:3]

    with pytest.raises(rlgen.PluginError, match="exported no weights for"):
        sampler.sync_weights(Partial(trainer.model, share=False))

    class Renamed(HoldingTrainer):
        def export_weights(self):
            yield "module.lm_head.weight", torch.zeros(1)

    with pytest.raises(rlgen.PluginError, match="no slot for"):
        sampler.sync_weights(Renamed(trainer.model, share=False))


def test_setup_sets_torch_threads(make_context, tiny_llama: Path) -> None:
    before = torch.get_num_threads()
    try:
        make_sampler(make_context, tiny_llama, threads=2)
        assert torch.get_num_threads() == 2
        make_sampler(make_context, tiny_llama)  # default: run.threads (1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_generate_before_setup_is_an_error() -> None:
    with pytest.raises(rlgen.PluginError, match="setup"):
        HFSampler().generate(PROMPTS, 2, seed=0)
