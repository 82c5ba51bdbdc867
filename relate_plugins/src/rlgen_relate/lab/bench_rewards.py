"""Time RELATE's cheap rewards and the credit-assignment combiner on a paper-sized rollout.

The issue's speed target: scoring 1,440 samples of 64 tokens (the paper's global batch) with relate.length,
relate.format, relate.risk and relate.diversity, then relate.credit, well under one second on one CPU core
(embedding and judge models excluded). The texts are synthetic ads with shared template phrases (so diversity
finds frequent n-grams) and some blacklisted words; the diversity window is filled first, so the figure is the
steady state of a run, not the cheaper first step. Both wall time and this process's CPU time are printed: on a
machine shared with other jobs the CPU time is the fairer single-core figure.

    OMP_NUM_THREADS=1 .venv/bin/python -m rlgen_relate.lab.bench_rewards [--samples 1440] [--tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import rlgen  # noqa: E402
from ..credit import CreditAssignment  # noqa: E402
from ..rewards import DiversityReward, FormatReward, LengthReward, RiskReward  # noqa: E402

PRODUCTS = ["running shoes", "flights to paris", "coffee beans", "yoga mats", "car insurance", "phone cases",
            "hotel rooms", "laptops", "garden tools", "skin cream", "headphones", "dog food", "office chairs"]
TEMPLATES = ["shop now and save", "free shipping on all orders", "limited time offer", "order today",
             "top quality at a great price", "best deals of the season", "guaranteed satisfaction",
             "discover our new collection", "book now and save big"]
WORDS = ("quality comfort style value fast easy fresh durable premium classic modern light strong soft smart "
         "daily trusted local global eco natural bright quiet secure simple").split()


def synthetic_ad(rng: random.Random, product: str) -> str:
    filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(18, 40)))
    title = f"{rng.choice(['Great', 'New', 'Top', 'Best'])} {product.title()}"
    desc = f"{rng.choice(TEMPLATES)} on {product}, {filler}, {rng.choice(TEMPLATES)}. 100% {rng.choice(WORDS)}"
    return f"Title: {title}\nDescription: {desc}"


def load_tokenizer(spec: str):
    from rlgen_plugins.models import load_tokenizer as load

    try:
        return load(spec, padding_side="right"), spec
    except Exception as exc:  # noqa: BLE001 - fall back to the tokenizer that is always installed
        print(f"(tokenizer {spec} unavailable: {exc}; using builtin:minilm-l6)")
        return load("builtin:minilm-l6", padding_side="right"), "builtin:minilm-l6"


def make_rollout(tokenizer, rng: random.Random, samples: int, group_size: int, tokens: int) -> rlgen.Rollout:
    texts, groups, metas = [], [], []
    for i in range(samples):
        g = i // group_size
        product = PRODUCTS[g % len(PRODUCTS)]
        text = synthetic_ad(rng, product)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > tokens:  # cut the text where its `tokens`-th token ends
            text = text[: enc["offset_mapping"][tokens - 1][1]]
        texts.append(text)
        groups.append(g)
        metas.append({"query": product, "bid_word": product.split()[0], "selling_points": ["free shipping"]})
    return rlgen.Rollout.from_texts(tokenizer, texts, groups, metas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1440)
    ap.add_argument("--group-size", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokenizer", default="builtin:tiny-llama")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    tokenizer, used = load_tokenizer(args.tokenizer)

    rewards = {"relate.length": LengthReward(), "relate.format": FormatReward(), "relate.risk": RiskReward(),
               "relate.diversity": DiversityReward()}
    weights = {name: 1.0 for name in rewards}
    credit = CreditAssignment()
    window = rewards["relate.diversity"].params.window
    rollouts = [make_rollout(tokenizer, rng, args.samples, args.group_size, args.tokens) for _ in range(window + args.repeats)]
    for r in rollouts[:window]:  # fill the rolling window so timings show the steady state
        rewards["relate.diversity"].score(r)

    wall: dict[str, list[float]] = {name: [] for name in [*rewards, "relate.credit", "total"]}
    cpu: dict[str, list[float]] = {name: [] for name in wall}

    def timed(name, fn, *a):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(*a)
        wall[name].append(time.perf_counter() - w0)
        cpu[name].append(time.process_time() - c0)
        return out

    for rollout in rollouts[window:]:
        w_start, c_start = time.perf_counter(), time.process_time()
        results = {name: timed(name, provider.score, rollout) for name, provider in rewards.items()}
        # what the loop's validation does: stamp each result with its provider's granularity
        results = {n: r.__class__(r.values, r.details, r.metrics, rewards[n].granularity) for n, r in results.items()}
        advantages = timed("relate.credit", credit.combine, rollout, results, weights)
        wall["total"].append(time.perf_counter() - w_start)
        cpu["total"].append(time.process_time() - c_start)
    b, t = rollouts[-1].completion_ids.shape
    print(f"rollout: {b} samples x {t} tokens (tokenizer {used}), diversity window {window} batches, "
          f"{args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(f"  {'':18s} {'wall median':>12s} {'cpu median':>12s} {'cpu max':>10s}")
    for name in wall:
        print(f"  {name:18s} {statistics.median(wall[name]) * 1000:9.1f} ms {statistics.median(cpu[name]) * 1000:9.1f} ms "
              f"{max(cpu[name]) * 1000:7.1f} ms")
    frac = float((advantages != 0).float().mean())
    print(f"total: {statistics.median(cpu['total']):.3f} s CPU, {statistics.median(wall['total']):.3f} s wall (median); "
          f"non-zero advantages {frac:.2f}; "
          f"diversity frequent n-grams last step {int(results['relate.diversity'].metrics['frequent_ngrams'])}")


if __name__ == "__main__":
    main()
