"""relate.format: each structural rule named when it fails; lines, JSON and regex layouts; custom rules."""

from __future__ import annotations

import pytest

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import FormatReward

GOOD = "Title: Fresh green tea\nDescription: Hand picked leaves from high mountain farms, shipped within a day."


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:minilm-l6", padding_side="right")


def run(provider, tok, texts, prompts=None, meta=None):
    r = rlgen.Rollout.from_texts(tok, texts, list(range(len(texts))), meta)
    r.prompt_texts = prompts
    res = check_reward_result(provider.score(r), plugin=provider.name, granularity="sentence", rollout=r)
    return res.values.tolist(), [d["failed"] for d in res.details], res


@pytest.mark.parametrize(
    ("text", "failed"),
    [
        (GOOD, []),
        ("Title：鲜绿茶\n\nDescription: 高山茶园手工采摘", []),  # full-width colon, blank line between fields
        ("Title: Fresh green tea", ["layout"]),  # description missing
        ("Sure! Here is your ad.\n" + GOOD, ["layout"]),  # stray text before the first field
        (GOOD + "\nTitle: again", ["layout"]),  # a field twice
        ("Title: Fresh green tea from the high mountain farms\nDescription: ok leaves", ["field_length"]),  # title > 30
        ("Title: Fresh green tea\nDescription: Hand picked leaves\nfrom high farms", ["no_line_break_in_field"]),
        (GOOD + " 🍵", ["no_emoji"]),
        ("**Title:** Fresh green tea\nDescription: Hand picked leaves", ["no_markup"]),
        ("Title: Fresh <b>green</b> tea\nDescription: Hand picked leaves", ["no_markup"]),
        ("Title: Fresh green tea\nDescription: See [our shop](http://x.y)", ["no_markup"]),
        ("Assistant: Title: Fresh green tea\nDescription: Hand picked", ["layout", "no_prompt_echo"]),
    ],
)
def test_rules(tok, text, failed):
    vals, fails, _ = run(FormatReward(), tok, [text])
    assert fails == [failed]
    assert vals == [pytest.approx(1.0 - 2.0 * len(failed) / 6)]


def test_prompt_echo_but_not_copied_context(tok):
    prompt = "Write a search ad for the query below. Query: green tea. Selling points: hand picked leaves from high mountain farms"
    meta = [{"query": "green tea", "selling_points": ["hand picked leaves from high mountain farms"]}] * 2
    echo = "Title: Write a search ad for tea\nDescription: Hand picked leaves"
    _, fails, res = run(FormatReward(), tok, [GOOD, echo], prompts=[prompt, prompt], meta=meta)
    assert fails == [[], ["no_prompt_echo"]]  # GOOD copies a selling point (5+ words), which is allowed
    assert res.metrics["fail/no_prompt_echo"] == 0.5 and res.metrics["pass_rate"] == 0.5


def test_json_and_regex_layouts(tok):
    js = FormatReward(FormatReward.Params(layout={"kind": "json"}, rules=["layout", "field_length", "no_line_break_in_field"]))
    _, fails, _ = run(js, tok, ['{"title": "Green tea", "description": "Hand picked"}', '{"title": "Green tea"}',
                                "title: x", '{"title": "a\\nb", "description": "c"}'])
    assert fails == [[], ["layout"], ["layout"], ["no_line_break_in_field"]]
    rx = FormatReward(FormatReward.Params(
        layout={"kind": "regex", "pattern": r"(?P<title>[^|]+)\|(?P<description>[^|]+)"}, rules=["layout", "field_length"]
    ))
    _, fails, _ = run(rx, tok, ["Green tea | Hand picked leaves", "just one part", "x" * 40 + "|y"])
    assert fails == [[], ["layout"], ["field_length"]]


def test_custom_rules_and_scoring_modes(tok):
    params = FormatReward.Params(
        custom_rules=[
            {"name": "mentions_brand", "pattern": r"\bteaco\b", "must_match": True},
            {"name": "no_exclamation_in_title", "pattern": "!", "field": "title"},
        ]
    )
    p = FormatReward(params)
    text = "Title: TeaCo green tea!\nDescription: Hand picked leaves!"
    vals, fails, _ = run(p, tok, [text, GOOD])
    assert fails == [["no_exclamation_in_title"], ["mentions_brand"]]
    assert vals == [pytest.approx(1 - 2 / 8)] * 2
    strict = FormatReward(FormatReward.Params(all_or_nothing=True))
    vals, _, _ = run(strict, tok, [GOOD, GOOD + " 🍵"])
    assert vals == [1.0, -1.0]


def test_param_errors():
    with pytest.raises(Exception, match="unknown rules"):
        FormatReward.Params(rules=["layout", "no_typos"])
    with pytest.raises(Exception, match="not a valid regex"):
        FormatReward.Params(custom_rules=[{"name": "x", "pattern": "("}])
    with pytest.raises(Exception, match="named group"):
        FormatReward.Params(layout={"kind": "regex", "pattern": "(?P<title>.*)"})
    with pytest.raises(rlgen.PluginError, match=r"relate\.format: params\.custom_rules 'x' names field 'body'"):
        FormatReward(FormatReward.Params(custom_rules=[{"name": "x", "pattern": "a", "field": "body"}]))


def test_registered():
    assert rlgen.registry().rewards["relate.format"] is FormatReward
