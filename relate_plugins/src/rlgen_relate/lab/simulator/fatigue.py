"""Ad fatigue: users stop reacting to a text they keep seeing, so near-duplicates in one set of ads lose clicks.

Two displayed ads are near-duplicates when the Jaccard similarity of their word-bigram sets is at least
``threshold``: the same ad, or a template with a word or two swapped. For each ad, the share ``s`` of the *other*
shown ads that are near-duplicates of it sets its CTR multiplier ``exp(-strength * max(0, s - tolerance))``:
an ad that looks like a few others is fine, a text stamped over the whole set is not.

Boilerplate is the same habit at the scale of a sentence and of one advertiser: a user who meets an advertiser's
ads on several searches skims a sentence they have already read there. :func:`boilerplate_shares` gives each
shown ad the share of its words that lie in sentences another shown ad of the same advertiser, written for a
different context, also displays (the model turns it into a CTR penalty).

Counting near-duplicates is a sparse matrix product (bigram incidence times its transpose), in row chunks. Above
``max_reference`` ads, each ad is compared with a seeded random sample of that many ads and its count is scaled
up: an unbiased estimate of the share at a bounded cost.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Sequence

import numpy as np
from scipy import sparse

_WORD = re.compile(r"[a-z0-9]+")


def _shingles(text: str) -> set[str]:
    words = _WORD.findall(text.lower())
    if len(words) < 2:
        return set(words)
    return {f"{a} {b}" for a, b in zip(words, words[1:])}


def near_duplicate_share(
    texts: Sequence[str],
    shown: Sequence[bool] | None = None,
    threshold: float = 0.5,
    max_reference: int = 4000,
    seed: int = 0,
    chunk: int = 1024,
) -> np.ndarray:
    """For each text, the share of the other shown texts that are near-duplicates of it (0 for texts not shown)."""
    n = len(texts)
    out = np.zeros(n, dtype=np.float64)
    idx = np.array([i for i in range(n) if shown is None or shown[i]], dtype=np.int64)
    m = len(idx)
    if m < 2:
        return out
    vocab: dict[str, int] = {}
    indptr = [0]
    indices: list[int] = []
    for i in idx:
        for s in _shingles(texts[i]):
            indices.append(vocab.setdefault(s, len(vocab)))
        indptr.append(len(indices))
    a = sparse.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), np.array(indices, dtype=np.int64), np.array(indptr)),
        shape=(m, max(len(vocab), 1)),
    )
    sizes = np.diff(a.indptr).astype(np.float64)
    if m > max_reference:
        ref = np.sort(np.random.default_rng(seed).choice(m, size=max_reference, replace=False))
    else:
        ref = np.arange(m)
    in_ref = np.zeros(m, dtype=bool)
    in_ref[ref] = True
    ref_t = a[ref].T.tocsc()
    ref_sizes = sizes[ref]
    for start in range(0, m, chunk):
        stop = min(start + chunk, m)
        inter = (a[start:stop] @ ref_t).toarray()
        union = sizes[start:stop, None] + ref_sizes[None, :] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            jac = np.where(union > 0, inter / union, 0.0)
        count = (jac >= threshold).sum(axis=1).astype(np.float64)
        own = in_ref[start:stop]
        count -= own  # an ad is not a duplicate of itself
        others = len(ref) - own  # how many other ads it was compared with
        out[idx[start:stop]] = np.where(others > 0, count / np.maximum(others, 1), 0.0)
    return out


def fatigue_multipliers(
    texts: Sequence[str],
    shown: Sequence[bool] | None = None,
    threshold: float = 0.5,
    tolerance: float = 0.02,
    strength: float = 2.0,
    max_reference: int = 4000,
    seed: int = 0,
) -> np.ndarray:
    """CTR multipliers in (0, 1]: ``exp(-strength * max(0, share - tolerance))`` per ad."""
    share = near_duplicate_share(texts, shown, threshold, max_reference, seed)
    return np.exp(-strength * np.maximum(0.0, share - tolerance))


def advertiser_key(context: dict[str, Any]) -> str | None:
    """Who placed the ad: the context's ``advertiser`` (within its vertical), else its landing page; None when the
    context says neither."""
    if context.get("advertiser"):
        return f"{context.get('vertical') or ''}\x1f{context['advertiser']}"
    if context.get("landing_page"):
        return f"landing\x1f{context['landing_page']}"
    return None


def boilerplate_shares(
    ad_sentences: Sequence[Sequence[tuple[str, ...]]],
    ad_words: Sequence[int],
    advertisers: Sequence[str],
    contexts: Sequence[str],
    shown: Sequence[bool],
) -> np.ndarray:
    """For each shown ad, the share of its ``ad_words`` displayed words inside sentences (word tuples) that a shown
    ad of the same advertiser for a *different* context also displays; 0 for ads not shown. The same ad text
    shown twice for one context is fatigue's business, not boilerplate."""
    where: dict[tuple[str, tuple[str, ...]], set[str]] = collections.defaultdict(set)
    for sents, adv, ctx, ok in zip(ad_sentences, advertisers, contexts, shown):
        if ok:
            for sent in set(sents):
                where[(adv, sent)].add(ctx)
    out = np.zeros(len(ad_sentences), dtype=np.float64)
    for i, (sents, n_words, adv, ctx, ok) in enumerate(zip(ad_sentences, ad_words, advertisers, contexts, shown)):
        if ok and n_words:
            repeated = sum(len(sent) for sent in sents if len(where[(adv, sent)] - {ctx}) > 0)
            out[i] = min(1.0, repeated / n_words)
    return out
