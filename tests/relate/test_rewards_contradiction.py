"""relate.contradiction: a negated clause is penalised, on its own tokens, only when everything it denies is
asserted by the ad itself, its bid word or the advertiser's selling points."""

from __future__ import annotations

import pytest

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import ContradictionReward

FACTS = {"bid_word": "urgent care", "selling_points": ["Free parking at every location", "No appointment needed",
                                                       "Self-pay visits from $139"]}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:smollm2-135m-instruct", padding_side="right")


def found(text, meta=None, **params):
    reward = ContradictionReward(ContradictionReward.Params(**params))
    return [text[s:e] for s, e in reward.contradictions(text, meta)]


@pytest.mark.parametrize("text, denied", [
    ("Title: Transmission Repair\nDescription: Free repair. No repair included.", ["No repair included"]),
    ("Title: Boxing Gym\nDescription: Unlimited classes, full-size gym, no classes available.", ["no classes available"]),
    ("Title: Security Camera No Security\nDescription: Wireless, no subscription", ["No Security"]),
    ("Title: Walk-in Clinic\nDescription: Walk-in visits today. Doesn't offer walk-in visits.",
     ["Doesn't offer walk-in visits"]),
])
def test_a_clause_denying_what_the_ad_asserts_is_found(text, denied):
    assert found(text) == denied


@pytest.mark.parametrize("text", [
    "Title: Online Checking\nDescription: No minimum balance. No monthly fees.",  # denies nothing asserted
    "Title: Parking Included\nDescription: Free parking. No parking fees.",  # denies fees, which nothing asserts
    "Title: Tools\nDescription: No hardware, no hardware",  # repeated (repetition's business), not contradicted
    "Title: Movers\nDescription: No job too small. Same-week moves.",
    "Title: Pet Insurance\nDescription: 90% back on vet bills, no caps on 2 claims",
    "Title: Linen Shirts\nDescription: Pay in 4 interest-free installments. Pay no interest.",
])
def test_a_negation_that_contradicts_nothing_is_left_alone(text):
    assert found(text) == []


def test_the_advertisers_facts_count_as_asserted_and_their_own_negations_do_not():
    # "No parking." denies the fact "Free parking at every location"
    assert found("Title: Urgent Care\nDescription: Self-pay visits from $139. No parking.", FACTS) == ["No parking"]
    assert found("Title: Urgent Care\nDescription: Self-pay visits from $139. No parking.") == []
    # "No appointment needed" is the advertiser's own negation: it asserts nothing about appointments
    assert found("Title: Urgent Care\nDescription: No appointment needed. Free parking.", FACTS) == []
    # the bid word is asserted
    assert found("Title: Walk-in clinic\nDescription: Fast visits, no urgent care.", FACTS) == ["no urgent care"]


def test_the_window_bounds_what_a_negation_denies():
    text = "Title: Repair Shop\nDescription: Free repair. No need to wait for a repair today"
    assert found(text) == []  # denies wait and today, which nothing asserts
    assert found("Title: Repair\nDescription: Repair plans. No longer offers any repair plans", window=2) == []
    # at 2 the scope holds only words that deny nothing themselves ("longer offers"); at 6 it reaches the plans
    assert found("Title: Repair\nDescription: Repair plans. No longer offers any repair plans", window=6) == [
        "No longer offers any repair plans"]
    assert found("Title: Repair\nDescription: Repair plans. Without repair plans") == ["Without repair plans"]


def test_the_penalty_sits_on_the_tokens_of_the_contradicting_clause(tok):
    texts = ["Title: Transmission Repair\nDescription: Free repair. No repair included.",
             "Title: Transmission Repair\nDescription: Free diagnostic. No appointment needed."]
    reward = ContradictionReward(ContradictionReward.Params(penalty=0.5))
    r = rlgen.Rollout.from_texts(tok, texts, [0, 0], meta=[FACTS, FACTS])
    res = check_reward_result(reward.score(r), plugin=reward.name, granularity="token", rollout=r)
    assert not res.values[1].any()
    offsets = r.token_offsets[0][res.values[0] != 0].tolist()
    assert "".join(texts[0][s:e] for s, e in offsets).strip() == "No repair included"
    assert set(res.values[0].unique().tolist()) == {0.0, -0.5}
    assert res.metrics == {"contradiction_rate": 0.5}
    assert res.details[0] == {"contradicts": ["No repair included"]} and res.details[1] == {"contradicts": []}
