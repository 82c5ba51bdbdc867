"""builtin:search-ads: size, coverage, split hygiene, determinism, the resolver hook and prompt rendering."""

from __future__ import annotations

import collections
import json
import re

import pytest

import rlgen
from rlgen.data import BuiltinDataset, PromptSource, read_records
from rlgen.errors import ConfigError
from rlgen_relate.searchads import PROMPT_TEMPLATE, SYSTEM_PROMPT, dataset_dir, generate_contexts, write_dataset
from rlgen_relate.searchads.cli import main as data_main
from rlgen_relate.searchads.vocabulary import fill, load_vocabulary
from rlgen_relate.lab.simulator.features import REJECT_RE

FIELDS = ("id", "vertical", "advertiser", "query", "bid_word", "selling_points", "landing_page", "split", "lang")


@pytest.fixture(scope="module")
def rows():
    return generate_contexts(0)


def test_size_and_coverage(rows):
    assert len(rows) >= 1000
    verticals = collections.Counter(r["vertical"] for r in rows)
    assert len(verticals) >= 20
    for must in ("health", "education", "travel", "loans", "legal", "home_services", "fashion", "auto_sales", "software"):
        assert must in verticals
    # every vertical is represented in both splits
    for v in verticals:
        splits = {r["split"] for r in rows if r["vertical"] == v}
        assert splits == {"train", "eval"}, v


def test_every_context_is_complete(rows):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for r in rows:
        assert tuple(r) == FIELDS
        assert 2 <= len(r["selling_points"]) <= 5, r["id"]
        assert len(set(r["selling_points"])) == len(r["selling_points"]), r["id"]
        for f in ("query", "bid_word", "landing_page", "advertiser"):
            assert isinstance(r[f], str) and r[f].strip(), (r["id"], f)
        assert 80 <= len(r["landing_page"]) <= 600, r["id"]
        assert r["lang"] == "en"


def test_no_template_artefacts(rows):
    """No unfilled slot, doubled space or dangling punctuation; varied queries; no claim review would reject."""
    for r in rows:
        texts = [r["query"], r["bid_word"], r["landing_page"], *r["selling_points"]]
        for t in texts:
            assert "{" not in t and "}" not in t, (r["id"], t)
            assert "  " not in t and not re.search(r" [.,;](?!\w)", t) and ".." not in t, (r["id"], t)
            assert t == t.strip()
        # selling points and landing pages hold only facts an ad may cite: nothing the simulated review rejects
        for t in [r["landing_page"], *r["selling_points"]]:
            assert not REJECT_RE.search(t.lower()), (r["id"], t)
    # the same query may be bought by several advertisers, but most contexts have their own phrasing
    assert len({r["query"].lower() for r in rows}) >= 0.5 * len(rows)
    # an advertiser quotes the same facts everywhere: one landing page per advertiser and offering
    per_adv = collections.defaultdict(set)
    for r in rows:
        per_adv[(r["vertical"], r["advertiser"])].add(r["landing_page"])
    assert all(1 <= len(pages) <= 2 for pages in per_adv.values())
    # selling points appear on the landing page they belong to
    for r in rows:
        for p in r["selling_points"]:
            assert p in r["landing_page"], (r["id"], p)


def test_split_is_by_advertiser_balanced_and_deterministic(rows):
    train_adv = {(r["vertical"], r["advertiser"]) for r in rows if r["split"] == "train"}
    eval_adv = {(r["vertical"], r["advertiser"]) for r in rows if r["split"] == "eval"}
    assert not train_adv & eval_adv
    n_eval = sum(r["split"] == "eval" for r in rows)
    assert 0.07 <= n_eval / len(rows) <= 0.15
    # no context (query, bid word, selling points) appears in both splits
    key = lambda r: (r["query"].lower(), r["bid_word"], tuple(r["selling_points"]))  # noqa: E731
    assert not {key(r) for r in rows if r["split"] == "train"} & {key(r) for r in rows if r["split"] == "eval"}
    assert generate_contexts(0) == rows
    other = generate_contexts(1)
    assert other != rows and len(other) == len(rows)


def test_slot_language():
    import random

    rng = random.Random(0)
    for _ in range(50):
        price = fill("{$:199-449}", rng)
        assert re.fullmatch(r"\$\d{3}", price) and price.endswith("9") and 199 <= int(price[1:]) <= 449
        big = fill("{$:2900-3900}", rng)
        assert re.fullmatch(r"\$\d,\d{3}", big) and big.endswith(("49", "99"))
        assert re.fullmatch(r"\$\d+\.(49|99)", fill("{$:9.99-12.99}", rng))
        assert int(fill("{%:10-25}", rng)[:-1]) in (10, 15, 20, 25)
        assert fill("{#:2000-5000/1000}", rng) in ("2,000", "3,000", "4,000", "5,000")
        assert 1988 <= int(fill("{#:1988-2014}", rng)) <= 2014  # years get no separator
        assert fill("{a|b}", rng) in ("a", "b")
    assert fill("in {city}", rng, {"city": "Austin"}) == "in Austin"
    with pytest.raises(ValueError, match="unknown slot"):
        fill("{nope}", rng)
    vocab = load_vocabulary()
    assert len(vocab.verticals) >= 20 and len(vocab.cities) >= 20


def test_hook_resolves_through_the_registry(tmp_path):
    reg = rlgen.registry()
    train = reg.resolve_dataset("builtin:search-ads", "train", tmp_path)
    evaluation = reg.resolve_dataset("builtin:search-ads", "eval", tmp_path)
    assert isinstance(train, BuiltinDataset) and isinstance(evaluation, BuiltinDataset)
    assert train.path.parent == evaluation.path.parent == dataset_dir(tmp_path)
    assert train.prompt_template == PROMPT_TEMPLATE and train.system_prompt == SYSTEM_PROMPT
    train_rows, eval_rows = read_records(train.path), read_records(evaluation.path)
    assert len(train_rows) + len(eval_rows) >= 1000
    assert {r["split"] for r in train_rows} == {"train"} and {r["split"] for r in eval_rows} == {"eval"}
    # generated once, then reused; no temporary leftovers next to it
    mtime = train.path.stat().st_mtime_ns
    again = reg.resolve_dataset("builtin:search-ads", "train", tmp_path)
    assert again.path == train.path and train.path.stat().st_mtime_ns == mtime
    assert [p.name for p in train.path.parent.parent.iterdir()] == [train.path.parent.name]
    with pytest.raises(ConfigError, match="splits"):
        reg.resolve_dataset("builtin:search-ads", "test", tmp_path)
    with pytest.raises(ConfigError, match="no installed plugin"):
        reg.resolve_dataset("builtin:no-such-data", "train", tmp_path)


def test_prompts_render_through_prompt_source(rows):
    records = [r for r in rows if r["split"] == "train"]
    source = PromptSource(records, PROMPT_TEMPLATE, prompts_per_step=4, seed=0, system_prompt=SYSTEM_PROMPT)
    batch = source.batch(1)
    assert len(batch) == 4
    for prompt in batch:
        system, user = prompt.messages
        assert system == {"role": "system", "content": SYSTEM_PROMPT}
        text = user["content"]
        meta = prompt.meta
        assert meta["query"] in text and meta["bid_word"] in text and meta["landing_page"] in text
        assert "; ".join(meta["selling_points"]) in text
        assert text.endswith("Title: <headline, at most 30 characters>\nDescription: <at most 90 characters>")
        assert isinstance(meta["selling_points"], list)  # rewards read the list from rollout.meta


def test_prompt_layout_is_what_relate_format_accepts():
    """The layout the prompt asks for passes relate.format's default rules (the two must agree)."""
    from rlgen_relate.rewards.format import FormatReward

    fmt = FormatReward()
    assert fmt.check("Title: Teeth Whitening from $249\nDescription: Results in one 60-minute visit. Book online today.") == []
    assert "field_length" in fmt.check("Title: " + "x" * 31 + "\nDescription: fine")


def test_write_dataset_and_cli(tmp_path, capsys):
    paths = write_dataset(tmp_path / "a", seed=3, contexts_per_vertical=20, advertisers_per_vertical=5)
    a = read_records(paths["train"]) + read_records(paths["eval"])
    assert len(a) == 20 * len(load_vocabulary().verticals)
    assert a == [r for r in generate_contexts(3, 20, 5) if r["split"] == "train"] + [
        r for r in generate_contexts(3, 20, 5) if r["split"] == "eval"
    ]
    assert data_main(["write", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["contexts"] + summary["eval"]["contexts"] >= 1000
    assert summary["eval"]["verticals"] >= 20
    assert read_records(tmp_path / "b" / "train.jsonl") == [r for r in generate_contexts(0) if r["split"] == "train"]
