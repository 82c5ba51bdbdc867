"""The shipped presets: RELATE and paper Table 2's Models 1-4 validate as complete runs and differ as Table 2 says."""

from __future__ import annotations

import pytest

import rlgen
from rlgen.config import apply_override, load_config
from rlgen.data import render
from rlgen.session import prepare
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.presets import NAMES, TABLE_2, TOKEN_LEVEL, preset
from rlgen_relate.rewards import FormatReward, OverflowReward

ALL = {"relate.length", "relate.format", "relate.overflow", "relate.ctcvr", "relate.diversity", "relate.correctness", "relate.relevance",
       "relate.risk", "repetition"}


@pytest.mark.parametrize("name", NAMES)
def test_table2_preset_validates(name, tmp_path):
    raw = preset(name, ctcvr_model=str(tmp_path / "ctcvr"))
    prepared = prepare(load_config(raw))
    plan, source = prepared.plan, prepared.source  # plugins, every params block, data and template
    rewards = {p.name for p in plan.rewards}
    on, credit = TABLE_2[name]
    assert rewards == set(on)
    assert plan.advantage.name == "relate.credit" and plan.trainer.name == "relate.grpo"
    assert raw["group_size"] == 8
    # Models 1-4 are sentence-level throughout: their token-level rewards are demoted (Eq. 4); RELATE keeps them
    assert set(plan.advantage.params.demote) == (set() if credit else rewards & set(TOKEN_LEVEL))
    assert len(source.records) > 1000
    if "relate.ctcvr" in rewards:
        ctcvr = next(p for p in plan.rewards if p.name == "relate.ctcvr")
        assert ctcvr.params.model == str(tmp_path / "ctcvr")


def test_each_model_adds_one_dimension_and_relate_adds_credit_only():
    sets = [set(TABLE_2[n][0]) for n in NAMES]
    assert sets[0] == {"relate.length", "relate.format", "relate.overflow"}
    for before, after in zip(sets[:3], sets[1:4]):
        assert before < after
    assert sets[3] == sets[4] == ALL
    assert [TABLE_2[n][1] for n in NAMES] == [False, False, False, False, True]
    # weights and params are shared: a configuration differs from RELATE only in what it drops
    full = {r["name"]: r for r in preset("relate")["rewards"]}
    for name in NAMES:
        for r in preset(name)["rewards"]:
            assert r == full[r["name"]]


def test_preset_prompt_renders_every_context_field(tmp_path):
    raw = preset("relate", ctcvr_model=str(tmp_path))
    prepared = prepare(load_config(raw))
    plan, source = prepared.plan, prepared.source
    record = source.records[0]
    text = source.prompt(record).text
    assert render(raw["data"]["prompt_template"], record) in text
    assert record["query"] in text and record["bid_word"] in text
    assert text.rstrip().endswith("Ad:")  # the completion starts where the two examples' ads start
    assert "temperature" not in raw["trainer"]["params"]  # the trainer reads it from the rollout


def test_unknown_preset_names_the_choices():
    with pytest.raises(KeyError, match="model1"):
        preset("model5")


def test_the_relate_preset_blames_the_token_that_ended_a_thin_description(tmp_path):
    """relate.overflow checks the format rule's own lengths, so it fires on exactly the length failures."""
    params = {r["name"]: r.get("params", {}) for r in preset("relate", ctcvr_model=str(tmp_path))["rewards"]}
    fmt = FormatReward(FormatReward.Params(**params["relate.format"]))
    overflow = OverflowReward(OverflowReward.Params(**params["relate.overflow"]))
    assert overflow.params.layout == fmt.params.layout
    texts = ["Title: Fresh Bagels Near You\nDescription: Baked every morning. Order online.\n",
             "Title: Fresh Bagels Near You\nDescription: Baked daily.\n",
             "Title: Fresh Bagels Near You Every Single Morning\nDescription: Baked every morning. Order online.\n"]
    r = rlgen.Rollout.from_texts(load_tokenizer("builtin:smollm2-135m-instruct", padding_side="right"), texts, [0, 1, 2])
    marked = (overflow.score(r).values != 0).sum(dim=1).tolist()
    assert [v < 0 for v in fmt.score(r).values.tolist()] == [m > 0 for m in marked] == [False, True, True]
    assert marked[1] == 1  # the thin description: only the token that ended it


def test_an_override_of_the_format_layout_leaves_the_overflow_layout_alone(tmp_path):
    raw = preset("relate", ctcvr_model=str(tmp_path))
    names = [r["name"] for r in raw["rewards"]]
    apply_override(raw, f"rewards.{names.index('relate.format')}.params.layout.fields.1.min_chars=20")
    overflow = raw["rewards"][names.index("relate.overflow")]["params"]["layout"]
    assert overflow["fields"][1]["min_chars"] == 30
