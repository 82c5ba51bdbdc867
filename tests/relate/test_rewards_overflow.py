"""relate.overflow: the tokens past a field's character limit, and only they, carry the penalty; it fires exactly
when relate.format's field_length rule fails on a too-long field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import FormatReward, OverflowReward


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:smollm2-135m-instruct", padding_side="right")


def scored(provider, tok, texts):
    r = rlgen.Rollout.from_texts(tok, texts, list(range(len(texts))))
    return r, check_reward_result(provider.score(r), plugin=provider.name, granularity="token", rollout=r)


def penalised_text(r, values, i):
    """The characters of sample i's penalised tokens, joined."""
    offsets = r.token_offsets[i][values[i] != 0].tolist()
    return "".join(r.texts[i][s:e] for s, e in offsets)


def test_only_the_tokens_past_the_limit_are_penalised(tok):
    title = "Same-Day Garage Door Repair and Spring Replacement"  # 50 characters, limit 30
    ok = "Title: Same-Day Garage Door Repair\nDescription: Broken springs fixed today. Call now."
    long_title = f"Title: {title}\nDescription: Broken springs fixed today."
    r, res = scored(OverflowReward(OverflowReward.Params(penalty=0.5)), tok, [ok, long_title])
    assert not res.values[0].any()
    assert set(res.values[1].unique().tolist()) == {0.0, -0.5}
    # the penalty starts at the token holding the title's 31st character and ends with the title
    first_over = long_title.index(title) + 30
    marked = r.token_offsets[1][res.values[1] != 0].tolist()
    assert marked[0][0] <= first_over < marked[0][1]
    assert marked[-1][1] == long_title.index(title) + len(title)
    assert penalised_text(r, res.values, 1).endswith(title[30:])
    assert res.details[1]["over"] == {"title": title[30:]}
    assert res.metrics["overflow_rate"] == 0.5 and res.metrics["overflow_rate/title"] == 0.5


def test_the_penalty_starts_with_the_word_that_crosses_the_limit(tok):
    """With whole_words: ' Sen' + 'iors' crosses 30 characters at 'iors', a near-certain continuation; the choice
    was ' Sen', so both carry the penalty."""
    text = "Title: Accessible Bathroom for Seniors\nDescription: Walk-in tubs and grab bars, installed in a day."
    words = OverflowReward(OverflowReward.Params(whole_words=True))
    r, res = scored(words, tok, [text])
    assert penalised_text(r, res.values, 0) == " Seniors"
    assert res.details[0]["over"] == {"title": "Seniors"}
    r, res = scored(OverflowReward(), tok, [text])  # the default: the tokens holding characters past the limit
    assert penalised_text(r, res.values, 0) == "iors"
    # a limit that falls on the space before a word blames that word, not the one before the space
    at_space = "Title: Affordable Garage Door Repairs Today"  # character 31 is the space before "Today"
    assert at_space[7 + 30] == " "
    r, res = scored(words, tok, [at_space])
    assert penalised_text(r, res.values, 0) == " Today"


def test_a_field_continued_on_another_line_counts_the_line_break(tok):
    desc = "x" * 60
    text = f"Title: Fresh Bagels\nDescription: {desc}\n{'y' * 29}"  # 60 + 1 + 29 = 90: at the limit
    assert not OverflowReward().overflow_spans(text)
    spans = OverflowReward().overflow_spans(text + "z")
    assert {k: (text + "z")[s:e] for k, (s, e) in spans.items()} == {"description": "z"}
    words = OverflowReward(OverflowReward.Params(whole_words=True))
    spans = words.overflow_spans(text + "z")  # the word that crossed the limit began the line
    assert {k: (text + "z")[s:e] for k, (s, e) in spans.items()} == {"description": "y" * 29 + "z"}


def test_it_fires_exactly_when_format_fails_on_a_long_field(tok):
    texts = [
        "Title: Fresh Bagels Near You\nDescription: Baked every morning. Order online, pick up in 10 minutes.",
        "Title: Fresh Bagels Near You Baked Every Single Morning\nDescription: Order online.",
        "Title: Bagels\nDescription: " + "Baked every morning, order online, pick up in ten minutes, " * 2,
        "  Title:   Bagels   \n\nDescription:    Baked every morning.   ",
    ]
    fmt = FormatReward(FormatReward.Params(rules=["field_length"], all_or_nothing=True))
    _, f = (lambda r: (r, fmt.score(r)))(rlgen.Rollout.from_texts(tok, texts, [0, 1, 2, 3]))
    _, o = scored(OverflowReward(), tok, texts)
    assert [v < 0 for v in f.values.tolist()] == [bool(row.any()) for row in o.values]


def test_limits_come_from_the_layout_or_the_override(tok):
    text = "Title: Fresh Bagels Near You\nDescription: Baked every morning."  # title 21 characters
    assert not OverflowReward().overflow_spans(text)
    assert OverflowReward(OverflowReward.Params(max_chars={"title": 20})).overflow_spans(text)["title"] is not None
    with pytest.raises(rlgen.PluginError, match="max_chars names fields \\['headline'\\]"):
        OverflowReward(OverflowReward.Params(max_chars={"headline": 20}))
    with pytest.raises(rlgen.PluginError, match="'lines' or 'regex'"):
        OverflowReward(OverflowReward.Params(layout={"kind": "json"}))


def test_a_regex_layout_maps_spans_into_the_unstripped_text(tok):
    layout = {"kind": "regex", "pattern": r"(?P<title>[^|]*)\|(?P<description>.*)",
              "fields": [{"name": "title", "max_chars": 5}, {"name": "description", "max_chars": 90}]}
    text = "  Bagels today|Fresh."
    spans = OverflowReward(OverflowReward.Params(layout=layout)).overflow_spans(text)
    assert {k: text[s:e] for k, (s, e) in spans.items()} == {"title": "s today"}
    spans = OverflowReward(OverflowReward.Params(layout=layout, whole_words=True)).overflow_spans(text)
    assert {k: text[s:e] for k, (s, e) in spans.items()} == {"title": "Bagels today"}


SHORT_LAYOUT = {"fields": [{"name": "title", "labels": ["Title"], "max_chars": 30},
                           {"name": "description", "labels": ["Description"], "min_chars": 30, "max_chars": 90}]}


def test_a_field_ended_short_of_its_minimum_penalises_the_token_that_ended_it(tok):
    thin = "Title: Calculus Tutoring Online\nDescription: Free.\n"
    full = "Title: Calculus Tutoring Online\nDescription: Free first lesson, tutors with degrees.\n"
    provider = OverflowReward(OverflowReward.Params(penalty=0.5, layout=SHORT_LAYOUT))
    r, res = scored(provider, tok, [thin, full])
    assert not res.values[1].any()
    marked = res.values[0].nonzero().flatten().tolist()
    assert len(marked) == 1  # one choice ended the field: the token after "Free."
    start, end = r.token_offsets[0, marked[0]].tolist()
    assert end > thin.index("Free.") + len("Free.") and "\n" in thin[start:end]
    assert res.details[0] == {"over": {}, "short": ["description"]}
    assert res.metrics["short_rate/description"] == 0.5
    # the default layout's min_chars of 1 leaves a thin field alone
    assert not OverflowReward().score(r).values.any()


def test_a_stop_token_that_ended_a_short_field_carries_the_penalty(tok):
    """As the samplers hand it over: the stop string is cut from the text, its token has an empty span at the end."""
    raw = "Title: Calculus Tutoring Online\nDescription: Free.\n\n"
    r = rlgen.Rollout.from_texts(tok, [raw], [0])
    text = raw.rstrip("\n")
    offsets = r.token_offsets.clamp(max=len(text))
    r = dataclasses.replace(r, texts=[text], token_offsets=offsets)
    values = OverflowReward(OverflowReward.Params(layout=SHORT_LAYOUT)).score(r).values
    marked = values[0].nonzero().flatten().tolist()
    assert len(marked) == 1 and offsets[0, marked[0]].tolist() == [len(text), len(text)]
    # a text cut right after the field (no token after it) has no ending token to blame
    cut = rlgen.Rollout.from_texts(tok, [text], [0])
    assert not OverflowReward(OverflowReward.Params(layout=SHORT_LAYOUT)).score(cut).values.any()


def test_it_fires_exactly_when_format_fails_on_a_short_field(tok):
    texts = [
        "Title: Fresh Bagels Near You\nDescription: Baked every morning. Order online.\n",
        "Title: Fresh Bagels Near You\nDescription: Baked daily.\n",
        "Title: Bagels\nDescription: Baked every\nmorning, order it\n",  # 29 characters over two lines
        "Title: Bagels\nDescription: Baked every\nmorning, order now\n",  # 30: at the minimum
    ]
    fmt = FormatReward(FormatReward.Params(rules=["field_length"], all_or_nothing=True, layout=SHORT_LAYOUT))
    f = fmt.score(rlgen.Rollout.from_texts(tok, texts, [0, 1, 2, 3]))
    _, o = scored(OverflowReward(OverflowReward.Params(layout=SHORT_LAYOUT)), tok, texts)
    assert [v < 0 for v in f.values.tolist()] == [bool(row.any()) for row in o.values] == [False, True, True, False]
