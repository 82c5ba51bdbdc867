"""Data contracts: Rollout, spans -> tokens, RewardResult checks, group normalisation (Eq. 8)."""

from __future__ import annotations

import pytest
import torch

import rlgen
from rlgen.advantage import check_advantages, group_normalize
from rlgen.reward import check_reward_result

from .toy_plugins import CharTokenizer


class PieceTokenizer:
    """A fast-tokenizer stand-in with a fixed segmentation and a real offsets mapping."""

    pad_token_id = 0

    def __init__(self, pieces: dict[str, list[str]]):
        self.pieces = pieces

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        ids, offs, pos = [], [], 0
        for p in self.pieces[text]:
            ids.append(len(ids) + 1)
            offs.append((pos, pos + len(p)))
            pos += len(p)
        out = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offs
        return out


def test_spans_map_to_every_overlapping_token():
    # "guaranteed" split over three tokens; "best" glued to punctuation in one token
    tok = PieceTokenizer({
        "we guaranteed it": ["we", " guar", "ante", "ed", " it"],
        "the best!": ["the", " best!"],
    })
    r = rlgen.Rollout.from_texts(tok, ["we guaranteed it", "the best!"], group=[0, 0])
    assert r.completion_mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    hit = r.spans_to_tokens([[(3, 13)], [(4, 8)]])
    assert hit.tolist() == [[False, True, True, True, False], [False, True, False, False, False]]
    # no span, and a span on padding only, mark nothing
    assert not r.spans_to_tokens([[], []]).any()


def test_from_texts_without_offsets_decodes_incrementally():
    r = rlgen.Rollout.from_texts(CharTokenizer(), ["ab c", "d"], group=[0, 1], meta=[{"q": 1}, {"q": 2}])
    assert r.token_offsets[0, :4].tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert r.spans_to_tokens([[(3, 4)], [(0, 1)]]).nonzero().tolist() == [[0, 3], [1, 0]]
    assert r.meta[1] == {"q": 2}


def test_token_char_offsets_handles_multibyte_and_empty_tokens():
    class Bytes:
        def decode(self, ids, skip_special_tokens=True):
            data = bytes(i for i in ids if i != 0)  # id 0 is a special token that decodes to nothing
            return data.decode("utf-8", errors="replace")

    ids = list("é!".encode()) + [0]  # é is two bytes
    offs = rlgen.token_char_offsets(Bytes(), ids)
    assert offs == [(0, 0), (0, 1), (1, 2), (2, 2)]


def test_rollout_rejects_bad_shapes():
    with pytest.raises(ValueError, match="completion_mask must be bool"):
        rlgen.Rollout(texts=["a"], completion_ids=torch.zeros(1, 2, dtype=torch.long),
                      completion_mask=torch.ones(1, 2), group=torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="group must be int64"):
        rlgen.Rollout(texts=["a", "b"], completion_ids=torch.zeros(2, 2, dtype=torch.long),
                      completion_mask=torch.ones(2, 2, dtype=torch.bool), group=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        rlgen.Rollout(texts=["a"], completion_ids=torch.zeros(1, 2, dtype=torch.long),
                      completion_mask=torch.ones(1, 2, dtype=torch.bool), group=torch.zeros(1, dtype=torch.long),
                      temperature=0.0)


def _rollout():
    return rlgen.Rollout.from_texts(CharTokenizer(), ["abc", "a"], group=[0, 0])


@pytest.mark.parametrize(
    "values,granularity,message",
    [
        (torch.ones(2, 3), "sentence", r"reward 'x' is sentence-level: values must be \[B=2\]"),
        (torch.ones(2), "token", r"reward 'x' is token-level: values must be \[B=2, T=3\]"),
        (torch.ones(2, 3), "token", "zero on padding"),
        (torch.tensor([1.0, float("nan")]), "sentence", "non-finite"),
        (torch.tensor([1, 2]), "sentence", "floating point"),
    ],
)
def test_reward_checks_name_the_plugin(values, granularity, message):
    with pytest.raises(rlgen.PluginError, match=message):
        check_reward_result(rlgen.RewardResult(values), plugin="x", granularity=granularity, rollout=_rollout())


def test_token_reward_reduces_to_sentence_by_summing():  # Eq. 4
    r = _rollout()
    values = torch.tensor([[-1.0, 0.0, -2.0], [-0.5, 0.0, 0.0]])
    res = check_reward_result(rlgen.RewardResult(values), plugin="x", granularity="token", rollout=r)
    assert res.granularity == "token"
    assert res.to_sentence(r.completion_mask).tolist() == [-3.0, -0.5]


def test_group_normalize_matches_eq_8_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 0.0, 4.0])
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    adv, zero_frac = group_normalize(values, group)
    # group 0: mean 2, sample std 1; group 1: zero variance -> 0; group 2: mean 2, std sqrt(8)
    s2 = 8 ** 0.5
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, -2 / s2, 2 / s2]), atol=1e-6)
    assert zero_frac == pytest.approx(1 / 3)
    centred, _ = group_normalize(values, group, scale="none")
    assert torch.allclose(centred, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, -2.0, 2.0]))
    batch, _ = group_normalize(values, group, scale="batch")
    assert torch.allclose(batch, centred / values.std(), atol=1e-6)


def test_advantage_check_rejects_padding_credit():
    r = _rollout()
    with pytest.raises(rlgen.PluginError, match="non-zero advantages on padding"):
        check_advantages(torch.ones(2, 3), plugin="c", rollout=r)
    ok = rlgen.broadcast_to_tokens(torch.tensor([1.0, -1.0]), r.completion_mask)
    assert check_advantages(ok, plugin="c", rollout=r).tolist() == [[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]]


def _with_prompts(texts, group, prompt_width, prompt_tokens):
    """A rollout with left-padded prompts of ``prompt_tokens`` real tokens each and sampler logprobs."""
    r = rlgen.Rollout.from_texts(CharTokenizer(), texts, group=group)
    b = len(texts)
    mask = torch.zeros(b, prompt_width, dtype=torch.bool)
    for i, n in enumerate(prompt_tokens):
        mask[i, prompt_width - n:] = True
    r.prompt_ids = torch.where(mask, torch.arange(1, prompt_width + 1).expand(b, -1), torch.zeros(b, prompt_width,
                                                                                                    dtype=torch.long))
    r.prompt_mask = mask
    r.prompt_texts = [f"p{g}" for g in group]
    r.meta = [{"i": i} for i in range(b)]
    r.logprobs = torch.where(r.completion_mask, -0.5, 0.0)
    r.temperature = 0.7
    return r


def test_select_keeps_rows_in_order_and_renumbers_groups():
    r = _with_prompts(["aa", "bbb", "c", "dddd"], [0, 0, 1, 2], 3, [3, 3, 2, 1])
    s = r.select([3, 1, 0])
    assert s.texts == ["dddd", "bbb", "aa"]
    assert s.group.tolist() == [0, 1, 1]  # groups 2, 0, 0 by first appearance
    assert s.completion_ids.equal(r.completion_ids[[3, 1, 0]])
    assert s.prompt_mask.equal(r.prompt_mask[[3, 1, 0]]) and s.meta == [{"i": 3}, {"i": 1}, {"i": 0}]
    assert s.logprobs.equal(r.logprobs[[3, 1, 0]]) and s.temperature == 0.7


def test_select_carries_per_sample_extras_and_drops_per_batch_ones():
    r = _with_prompts(["aa", "bbb", "c"], [0, 0, 1], 3, [3, 3, 2])
    r.extras = {"finish_reason": ["eos", "length", "stop"], "engine": "hf", "pair": [1, 2]}
    assert r.select([2, 0]).extras == {"finish_reason": ["stop", "eos"]}


def test_reward_result_select_takes_values_and_details_of_the_rows():
    token = rlgen.RewardResult(values=torch.arange(6.0).view(3, 2), details=[{"i": 0}, {"i": 1}, {"i": 2}],
                               metrics={"rate": 0.5}, granularity="token")
    s = token.select([2, 0])
    assert s.values.tolist() == [[4.0, 5.0], [0.0, 1.0]] and s.details == [{"i": 2}, {"i": 0}]
    assert s.metrics == {"rate": 0.5} and s.granularity == "token"
    assert rlgen.RewardResult(values=torch.tensor([1.0, 2.0])).select([1]).values.tolist() == [2.0]


def test_concat_repads_completions_right_and_prompts_left():
    a = _with_prompts(["ab", "c"], [0, 1], 2, [2, 1])
    b = _with_prompts(["dcbad"], [0], 4, [3])
    c = rlgen.Rollout.concat([a, b])
    assert c.texts == ["ab", "c", "dcbad"] and c.group.tolist() == [0, 1, 2]
    assert c.completion_ids.shape == (3, 5) and c.prompt_ids.shape == (3, 4)
    assert c.completion_mask.sum(1).tolist() == [2, 1, 5]
    # a's completions keep their tokens at the left, its prompts theirs at the right
    assert c.completion_ids[0, :2].equal(a.completion_ids[0, :2]) and not c.completion_mask[0, 2:].any()
    assert c.prompt_ids[0, 2:].equal(a.prompt_ids[0]) and not c.prompt_mask[0, :2].any()
    assert c.prompt_mask[2].equal(b.prompt_mask[0])
    assert c.token_offsets.shape == (3, 5, 2) and c.logprobs.shape == (3, 5)
    assert c.meta == [{"i": 0}, {"i": 1}, {"i": 0}] and c.prompt_texts == ["p0", "p1", "p0"]
    with pytest.raises(ValueError, match="temperature"):
        b.temperature = 1.0
        rlgen.Rollout.concat([a, b])
