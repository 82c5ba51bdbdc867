"""relate.diversity: Eq. 5 second term and its Eq. 4 sum, distinct-prompt counting, which context copies are exempt
(keywords, short mentions) and which count (pasted sentences), window, resume."""

from __future__ import annotations

import io
import math
import random
import re

import pytest
import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import DiversityReward
from rlgen_relate.rewards._text import WORD_RE

L = -1.0


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:minilm-l6", padding_side="right")


def rollout_of(tok, texts, groups, meta=None, prompts=None):
    r = rlgen.Rollout.from_texts(tok, texts, groups, meta)
    r.prompt_texts = prompts
    return r


def score(provider, rollout):
    return check_reward_result(provider.score(rollout), plugin=provider.name, granularity="token", rollout=rollout)


def provider(**kw):
    kw.setdefault("min_group_fraction", 0.0)
    kw.setdefault("min_groups", 2)
    return DiversityReward(DiversityReward.Params(**kw))


def test_eq5_and_eq4_hand_computed(tok):
    texts = ["book now and save today", "book now and save big", "fresh coffee beans", "book now"]
    r = rollout_of(tok, texts, [0, 1, 2, 2])
    assert r.completion_ids.shape == (4, 5)  # one WordPiece token per word
    d = provider(penalty=0.25)
    res = score(d, r)
    lam = -0.25
    expected = torch.tensor([
        [lam, lam, lam, lam, 0],  # "book now and save" is in prompts 0 and 1; "today" only in prompt 0
        [lam, lam, lam, lam, 0],
        [0, 0, 0, 0, 0],          # padding after 3 tokens stays zero
        [lam, lam, 0, 0, 0],      # an n-gram at the very end of a completion ("book now": prompts 0, 1, 2)
    ])
    assert torch.equal(res.values, expected.float())
    # Eq. 4: the sentence-level form is the sum over the sample's tokens
    assert torch.equal(res.to_sentence(r.completion_mask), torch.tensor([4 * lam, 4 * lam, 0.0, 2 * lam]))
    assert [x["ngrams"] for x in res.details] == [["book now and save"], ["book now and save"], [], ["book now"]]
    assert d.last_frequent[:2] == [{"text": "book now", "n": 2, "groups": 3}, {"text": "book now and save", "n": 4, "groups": 2}]
    assert res.metrics["threshold_groups"] == 2.0
    assert res.metrics["hit_rate"] == 0.75


def test_repeats_within_one_prompt_are_not_a_template(tok):
    texts = ["book now and save"] * 5 + ["fresh coffee beans daily"] * 5
    res = score(provider(), rollout_of(tok, texts, [0] * 5 + [1] * 5))
    assert not res.values.any()


def test_copied_from_own_context_is_not_counted(tok):
    texts = ["cheap flights to rome", "cheap flights for you"]
    meta = [{"query": "Cheap flights"}, {"query": "cheap flights", "selling_points": ["to rome"]}]
    res = score(provider(), rollout_of(tok, texts, [0, 1], meta))
    assert not res.values.any()
    # without the exclusion the shared phrase is frequent (2 prompts)
    res = score(provider(exclude_context=False), rollout_of(tok, texts, [0, 1], meta))
    assert torch.equal(res.values[:, :2], torch.full((2, 2), L))
    # only a sample that copied the phrase from its own context is spared; the other one copied a template
    meta = [{"query": "cheap flights"}, {"query": "rome hotels"}]
    res = score(provider(), rollout_of(tok, texts + ["cheap flights now"], [0, 1, 2], meta + [{"query": "x"}]))
    assert not res.values[0].any() and res.values[1, :2].eq(L).all() and res.values[2, :2].eq(L).all()


def test_prompt_text_counts_as_context(tok):
    texts = ["write an ad about shoes", "write an ad about tea"]
    prompts = ["Write an ad about shoes.", "Write an ad about tea."]
    # before issue 16 every copy of the prompt was exempt, so an echoed instruction was invisible
    assert not score(provider(mention_words=None), rollout_of(tok, texts, [0, 1], prompts=prompts)).values.any()
    # now the 4-word echo of the prompt's instruction is a pasted template in both prompts; "about shoes" is a mention
    res = score(provider(), rollout_of(tok, texts, [0, 1], prompts=prompts))
    assert torch.equal(res.values, torch.tensor([[L, L, L, L, 0], [L, L, L, L, 0]]))
    assert res.details[0]["ngrams"] == ["write an ad about"]
    # a short echo is a mention
    short = ["an ad about shoes", "an ad about tea"]
    assert not score(provider(), rollout_of(tok, short, [0, 1], prompts=prompts)).values.any()
    assert score(provider(), rollout_of(tok, short, [0, 1])).values.any()


LOYALTY = "Loyalty discounts for current owners"


def advertiser_contexts(n):
    """``n`` contexts of one car dealer: different searches, the same pool of selling points."""
    queries = ["honda civic lease", "used honda near me", "honda service specials", "new honda accord"]
    return [{"query": queries[k], "bid_word": queries[k], "selling_points": [LOYALTY, "Free car wash with every service"]}
            for k in range(n)]


def test_phrases_of_the_prompts_example_ads_are_no_mention_beside_a_context(tok):
    # a few-shot prompt: every context's prompt holds the same example ad ("book online")
    example = "Query: bike repair\nAd:\nTitle: Same-Day Bike Repair\nDescription: Flat tires fixed. Book online.\n\n"
    meta = [{"query": "tea shop", "bid_word": "green tea", "selling_points": ["Loose-leaf teas"]},
            {"query": "bakery", "bid_word": "fresh bread", "selling_points": ["Baked daily"]}]
    prompts = [example + f"Query: {m['query']}\nAd:\n" for m in meta]
    texts = ["Green tea, loose-leaf teas. Book online.", "Fresh bread baked daily. Book online."]
    res = score(provider(), rollout_of(tok, texts, [0, 1], meta, prompts))
    # the example ad's phrase pasted into both ads is a template; each ad's own selling point stays a mention
    assert [d["ngrams"] for d in res.details] == [["Book online"], ["Book online"]]
    # with no context fields the prompt is the context, and a short copy of it a mention
    assert not score(provider(), rollout_of(tok, texts, [0, 1], None, prompts)).values.any()


def test_pasted_selling_point_across_an_advertisers_contexts_is_a_template(tok):
    meta = advertiser_contexts(3)
    pasted = [f"Civic deals this week. {LOYALTY}.", f"Certified used Hondas. {LOYALTY}.", f"Oil change specials. {LOYALTY}."]
    r = rollout_of(tok, pasted, [0, 1, 2], meta)
    res = score(provider(), r)
    assert [d["ngrams"] for d in res.details] == [[LOYALTY]] * 3
    for i, text in enumerate(pasted):
        start = text.index(LOYALTY)
        assert torch.equal(res.values[i] != 0, r.spans_to_tokens([[(start, start + len(LOYALTY))] if k == i else [] for k in range(3)])[i])
    # the old rule exempted every copy: the pasted sentence was invisible
    assert not score(provider(mention_words=None), r).values.any()
    # naming the selling point in the ad's own words is a mention, in every context
    named = ["Civic deals with loyalty discounts.", "Certified used Hondas, loyalty discounts too.", "Oil change, loyalty discounts."]
    assert not score(provider(), rollout_of(tok, named, [0, 1, 2], meta)).values.any()
    # one prompt pasting its own point (all its samples) stays below min_groups
    one = rollout_of(tok, pasted + ["Great tea.", "Fresh bread."], [0, 0, 0, 1, 2], [meta[0]] * 3 + [{"query": "tea"}, {"query": "bread"}])
    assert not score(provider(), one).values.any()
    # ... unless pastes are templates by construction: then the paste is flagged in the one prompt, and only the paste
    res = score(provider(penalize_pastes=True), one)
    assert [d["ngrams"] for d in res.details] == [[LOYALTY]] * 3 + [[], []]
    assert not score(provider(penalize_pastes=True), rollout_of(tok, named, [0, 1, 2], meta)).values.any()


def test_copies_of_the_searchers_words_are_exempt_at_any_length(tok):
    query = "emergency plumber open now near me"
    meta = [{"query": query, "bid_word": "emergency plumber", "selling_points": [p]} for p in ("Licensed", "Insured")]
    texts = [f"{query} licensed", f"{query} insured"]
    assert not score(provider(), rollout_of(tok, texts, [0, 1], meta)).values.any()
    # only the named keyword fields have that privilege
    res = score(provider(keyword_fields=[]), rollout_of(tok, texts, [0, 1], meta))
    assert res.details[0]["ngrams"] == [query]


def test_cjk_character_ngrams(tok):
    texts = ["立即购买优惠", "现在立即购买", "好产品"]
    res = score(provider(), rollout_of(tok, texts, [0, 1, 2]))
    assert res.details[0]["ngrams"] == ["立即购买"] and res.details[1]["ngrams"] == ["立即购买"]
    assert torch.equal(res.values[0, :6] != 0, torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.bool))
    assert torch.equal(res.values[1, :6] != 0, torch.tensor([0, 0, 1, 1, 1, 1], dtype=torch.bool))
    assert not res.values[2].any()


def test_ngram_range(tok):
    texts = ["book now please", "book now please", "book now", "book now"]
    res = score(provider(ngram_min=3), rollout_of(tok, texts, [0, 1, 2, 3]))
    assert res.values[0, :3].eq(L).all() and not res.values[2].any()  # the shared 2-gram alone is below n=3
    res = score(provider(ngram_min=2, ngram_max=2), rollout_of(tok, texts, [0, 1, 2, 3]))
    assert res.values[2, :2].eq(L).all()
    with pytest.raises(Exception, match="ngram_max"):
        DiversityReward.Params(ngram_min=4, ngram_max=3)


def test_layout_labels_and_line_breaks_do_not_make_ngrams(tok):
    texts = ["Title: sunny day\nDescription: fresh", "Title: rainy night\nDescription: fresh"]
    assert not score(provider(), rollout_of(tok, texts, [0, 1])).values.any()
    res = score(provider(ignore=[]), rollout_of(tok, texts, [0, 1]))
    assert res.details[0]["ngrams"] == ["Description: fresh"]  # now the label joins the word after it


def test_threshold_is_a_share_of_prompts(tok):
    texts = ["big summer sale", "big summer sale", "big summer sale"] + [f"item {w}" for w in "abcdefg"]
    d = provider(min_group_fraction=0.3, min_groups=1)
    res = score(d, rollout_of(tok, texts, list(range(10))))
    assert res.metrics["threshold_groups"] == 3.0
    assert res.values[0, :3].eq(L).all()
    res = score(provider(min_group_fraction=0.4, min_groups=1), rollout_of(tok, texts, list(range(10))))
    assert res.metrics["threshold_groups"] == 4.0 and not res.values[:3].any()


def test_rolling_window_and_resume(tok):
    first = rollout_of(tok, ["summer sale now on", "green tea"], [0, 1])
    second = rollout_of(tok, ["summer sale now on", "black coffee"], [0, 1])
    d = provider(window=1)
    assert not score(d, first).values.any()  # one prompt so far
    state = d.state_dict()
    res = score(d, second)  # the window's prompt plus this one: two prompts
    assert res.values[0, :4].eq(L).all() and not res.values[1].any()
    assert not score(provider(window=0), second).values.any()

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    resumed = provider(window=1)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(score(resumed, second).values, res.values)
    # the window forgets batches older than `window`
    d2 = provider(window=1)
    score(d2, first)
    score(d2, rollout_of(tok, ["x y", "z w"], [0, 1]))
    assert not score(d2, second).values.any()


def _reference_penalised_words(texts, groups, keywords, contexts, nmin, nmax, threshold, mention):
    """Plain-Python statement of the rule: per sample, the indices of words inside a frequent n-gram occurrence,
    where a copy of the sample's keywords, or of the rest of its context up to ``mention`` words, is exempt."""
    words = [WORD_RE.findall(t.casefold()) for t in texts]

    def grams(x):  # n-grams do not cross line breaks (context fields are joined by them)
        lines = [WORD_RE.findall(line.casefold()) for line in x.split("\n")]
        return {tuple(c[i:i + n]) for c in lines for n in range(nmin, nmax + 1) for i in range(len(c) - n + 1)}

    kw = [grams(x) for x in keywords]
    ctx = [{g for g in grams(x) if len(g) <= mention} | kw[k] for k, x in enumerate(contexts)]
    occ = []
    prompts: dict[tuple, set] = {}
    for k, ws in enumerate(words):
        for n in range(nmin, nmax + 1):
            for i in range(len(ws) - n + 1):
                g = tuple(ws[i:i + n])
                if g in ctx[k]:
                    continue
                occ.append((k, i, n, g))
                prompts.setdefault(g, set()).add(groups[k])
    out = [set() for _ in texts]
    for k, i, n, g in occ:
        if len(prompts[g]) >= threshold:
            out[k].update(range(i, i + n))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_python_reference(tok, seed):
    rng = random.Random(seed)
    vocab = "alpha beta gamma delta eps zeta eta theta".split()
    texts, groups, meta = [], [], []
    points = [" ".join(rng.choice(vocab[:5]) for _ in range(6)) for _ in range(3)]  # an advertiser's pool
    for g in range(8):
        query = " ".join(rng.choice(vocab) for _ in range(3))
        point = points[g % 3]
        for _ in range(3):
            words = [rng.choice(vocab[:5]) for _ in range(rng.randint(2, 12))]
            if rng.random() < 0.5:  # paste (part of) the selling point
                cut = rng.randint(0, 6)
                words[rng.randint(0, len(words)):0] = point.split()[cut:]
            texts.append(" ".join(words))
            groups.append(g)
            meta.append({"query": query, "selling_points": [point]})
    d = DiversityReward(DiversityReward.Params(ngram_min=2, ngram_max=5, min_group_fraction=0.3, min_groups=2, mention_words=2))
    r = rollout_of(tok, texts, groups, meta)
    res = score(d, r)
    threshold = max(2, math.ceil(0.3 * 8))
    expected_words = _reference_penalised_words(
        texts, groups, [m["query"] for m in meta], [f"{m['query']}\n{m['selling_points'][0]}" for m in meta], 2, 5, threshold, 2
    )
    spans = []
    for text, idx in zip(texts, expected_words):
        pos = [m.span() for m in re.finditer(r"\w+", text)]
        spans.append([pos[i] for i in sorted(idx)])
    assert torch.equal(res.values != 0, r.spans_to_tokens(spans))
    assert any(expected_words)  # the random batch does contain templates


def test_registered_and_token_level():
    assert rlgen.registry().rewards["relate.diversity"] is DiversityReward
    assert DiversityReward.granularity == "token"
