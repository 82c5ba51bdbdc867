"""``relate.diversity``: token-level penalty on template-like n-grams, paper Eq. 5 second term (Eq. 4 summed).

What counts as an n-gram: word-level n-grams (n in ``[ngram_min, ngram_max]``, default the paper's [2, 10]) of
the NFKC + case-folded completion, where a word is a run of letters/digits of a space-delimited script and every
CJK character is a word of its own (Chinese has no spaces, so its n-grams are character n-grams). Punctuation is
skipped, so "Book now - save" and "book now, save" are the same 3-gram. Word n-grams rather than policy-token
n-grams make the penalty independent of the tokenizer and let one window survive a change of policy model.

How "high frequency" is decided (G_high): the frequency of an n-gram is the number of distinct *prompts* (groups)
with at least one sample containing it, over the current batch plus a rolling window of the last ``window``
batches. Counting prompts rather than occurrences means that G samples of one prompt repeating a phrase do not
make a template. An n-gram is frequent when it reaches ``max(min_groups, ceil(min_group_fraction * groups in batch
and window))``. Each ``score`` call is one batch of the window (pushed after scoring); a prompt drawn again in a
later batch counts once per batch.

Text copied from the sample's own context (issue 16). Using the context is what an ad is for, pasting it is a
template, and the rule tells them apart by what was copied and how much:

- n-grams copied from a ``keyword_fields`` field (the query, the bid word) are neither counted nor penalised at
  any length: the searcher's words recur across contexts because searchers type them, and using them is
  relevance, not a template;
- n-grams copied from the rest of the context (selling points, landing page) of up to ``mention_words`` words
  are a *mention* ("free diagnostics", "loyalty discounts") and are exempt too, so every ad may name its selling
  points. A sample without context fields has its prompt as its context; a sample with them does not, because
  the prompt's own wording (instruction, few-shot example ads) is shared by every context: "book online" copied
  from an example ad into the ads of many prompts is a template, and counts like one;
- longer copied n-grams (a pasted sentence, "loyalty discounts for current owners") count like any other n-gram.
  Contexts of one advertiser share its selling points and every prompt shares its instruction, so a policy that
  pastes them verbatim writes the same sentence into the ads of many prompts: that is now frequent and
  penalised, while one prompt pasting its own point stays below ``min_groups``. Before, every copied n-gram was
  exempt and a pasting policy's main template was invisible to this reward (``mention_words: null`` restores
  that).
- ``penalize_pastes`` does not wait for the window to see the template. A batch of 2 prompts and a window of
  a few batches rarely hold two contexts of one advertiser, so a policy pasting selling points verbatim goes
  unpenalised in training and shows up only at evaluation, where an advertiser's ads read alike (self-BLEU
  among one advertiser's ads: 0.077 for the base model, 0.116 after 48 RELATE steps). With it on, a copy longer
  than ``mention_words`` of the non-keyword context is flagged as if frequent: it is shared by every context
  of that advertiser by construction.

Penalty (Eq. 5): every completion token that overlaps an occurrence of a frequent n-gram gets ``-lambda_2``
once, however many frequent n-grams cover it; its sum over tokens is the sentence-level form of Eq. 4.

Speed: n-grams are 48-bit rolling hashes computed with numpy for the whole batch at once (one vector pass per n,
see :class:`._text.UnitBatch`), counted by sorting packed (hash, group) keys; no Python loop runs over tokens or
n-grams. Word hashes come from blake2b, so they are stable across processes and the window survives a resume
(``state_dict``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

import rlgen
from rlgen import get_logger

from ._text import WORD_RE, NormalizedBatch, UnitBatch, UnitHasher, context_text

_LOW16 = np.uint64(0xFFFF)
_SHIFT = np.uint64(16)
_MAX_GROUPS = 0xFFFF  # group index and per-batch count are packed into the low 16 bits of a key

log = get_logger("rlgen_relate.diversity")


_DEFAULT_IGNORE = [r"^[\s*_#>\-]*(?:title|headline|description|desc|标题|描述|正文)[\s*_]*[:：]"]
_BLOOM_BITS = 22  # size (log2) of the bit table that pre-filters exact membership tests


class _Segments:
    """The pieces of normalised texts between n-gram barriers (line breaks, ignored text such as field labels)."""

    def __init__(self, norms: list[str], barrier: re.Pattern[str] | None) -> None:
        texts: list[str] = []
        sample: list[int] = []
        offset: list[int] = []
        for k, text in enumerate(norms):
            pos = 0
            if barrier is not None:
                for m in barrier.finditer(text):
                    if m.start() > pos:
                        texts.append(text[pos : m.start()])
                        sample.append(k)
                        offset.append(pos)
                    pos = max(pos, m.end())
            if pos < len(text):
                texts.append(text[pos:])
                sample.append(k)
                offset.append(pos)
        self.texts = texts
        self.sample = np.array(sample, dtype=np.int64)
        self.offset = offset


class _NgramTable:
    """Every n-gram occurrence of a list of texts: 48-bit hash, owning text, first word (flat index), length."""

    __slots__ = ("hash48", "text", "start", "n", "words", "segments")

    def __init__(self, hash48: np.ndarray, text: np.ndarray, start: np.ndarray, n: np.ndarray, words: UnitBatch,
                 segments: _Segments):
        self.hash48, self.text, self.start, self.n, self.words, self.segments = hash48, text, start, n, words, segments

    def char_span(self, first_word: int, n: int) -> tuple[int, int, int]:
        """(text, start, end) in the normalised text of words ``first_word .. first_word + n - 1``."""
        seg = int(self.words.owner[first_word])
        s, e = self.words.char_span(seg, first_word, n)
        off = self.segments.offset[seg]
        return int(self.segments.sample[seg]), s + off, e + off


def _member(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``keys`` in ``sorted_set`` (both uint64), through a bit-table pre-filter so that only likely members pay
    for a binary search (most n-grams are not in the set)."""
    if sorted_set.size == 0 or keys.size == 0:
        return np.zeros(keys.shape[0], dtype=bool)
    mask = np.uint64((1 << _BLOOM_BITS) - 1)
    table = np.zeros(1 << _BLOOM_BITS, dtype=bool)
    table[(sorted_set & mask).astype(np.int64)] = True
    out = np.zeros(keys.shape[0], dtype=bool)
    maybe = np.flatnonzero(table[(keys & mask).astype(np.int64)])
    if maybe.size:
        cand = keys[maybe]
        pos = np.searchsorted(sorted_set, cand).clip(max=sorted_set.shape[0] - 1)
        out[maybe] = sorted_set[pos] == cand
    return out


class DiversityReward(rlgen.RewardProvider):
    name = "relate.diversity"
    description = "Token-level penalty -lambda_2 on tokens of n-grams frequent across prompts in a rolling window (Eq. 4, 5)."
    granularity = "token"

    class Params(rlgen.Params):
        penalty: float = Field(1.0, ge=0, description="lambda_2 of Eq. 5 (Delta d of Eq. 4): penalty per token of a frequent n-gram")
        ngram_min: int = Field(2, ge=1, le=32, description="shortest n-gram, in words (CJK: characters)")
        ngram_max: int = Field(10, ge=1, le=32, description="longest n-gram, in words (CJK: characters)")
        window: int = Field(4, ge=0, description="past batches whose n-gram counts join the current batch's (0: current batch only)")
        min_group_fraction: float = Field(
            0.2, ge=0, le=1, description="an n-gram is frequent when this share of the prompts in batch+window contain it"
        )
        min_groups: int = Field(2, ge=1, description="and in at least this many distinct prompts (floor of the threshold)")
        exclude_context: bool = Field(
            True, description="exempt n-grams a sample copied from its own context, as keyword_fields and "
            "mention_words say (False: copies count like any other n-gram)"
        )
        keyword_fields: list[str] = Field(
            default_factory=lambda: ["query", "bid_word"],
            description="rollout.meta fields holding the searcher's words: n-grams copied from them are exempt at any length",
        )
        mention_words: int | None = Field(
            3, ge=1, description="n-grams copied from the rest of the context (the prompt where there is none) up to this many words are "
            "a mention and exempt; longer copies (pasted sentences) count and are penalised when frequent "
            "(None: exempt every copy, the behaviour before issue 16)"
        )
        penalize_pastes: bool = Field(
            False, description="penalise a copy longer than mention_words (a pasted selling point or landing-page "
            "sentence) even when no other prompt in the batch or window used it: the advertiser's other contexts "
            "share that text, so the paste is a template across them whether or not the window drew them"
        )
        log_frequent: bool = Field(True, description="log each batch's most frequent n-grams (info level)")
        context_fields: list[str] = Field(
            default_factory=lambda: ["query", "bid_word", "selling_points", "landing_page"],
            description="rollout.meta fields that make up a sample's context (missing fields are skipped)",
        )
        ignore: list[str] = Field(
            default_factory=lambda: list(_DEFAULT_IGNORE),
            description="regexes (multiline, on case-folded text) of text that is no part of any n-gram and splits the "
            "words around it; default: the field labels of the default ad layout ('Title:', 'Description:')",
        )
        cross_lines: bool = Field(False, description="let n-grams run across line breaks (e.g. from title into description)")
        log_top: int = Field(10, ge=0, description="how many of the step's frequent n-grams to log (longest forms first)")

        @model_validator(mode="after")
        def _check_patterns(self) -> "DiversityReward.Params":
            for pattern in self.ignore:
                try:
                    re.compile(pattern, re.M)
                except re.error as exc:
                    raise ValueError(f"ignore pattern {pattern!r} is not a valid regex: {exc}") from exc
            return self

        @model_validator(mode="after")
        def _check_range(self) -> "DiversityReward.Params":
            if self.ngram_max < self.ngram_min:
                raise ValueError(f"ngram_max ({self.ngram_max}) must be >= ngram_min ({self.ngram_min})")
            return self

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        self._window: list[tuple[np.ndarray, int]] = []  # (sorted packed hash48<<16 | group count, number of groups)
        self._hasher = UnitHasher()
        barriers = [f"(?:{p})" for p in self.params.ignore] + ([] if self.params.cross_lines else [r"\n"])
        self._barrier = re.compile("|".join(barriers), re.M) if barriers else None
        self.last_frequent: list[dict[str, Any]] = []

    # -- n-gram hashing -----------------------------------------------------------------------------------------

    def _ngrams(self, texts: list[str]) -> _NgramTable:
        """All n-grams (n in [ngram_min, ngram_max]) of already-normalised ``texts``, vectorised over the batch."""
        p = self.params
        segments = _Segments(texts, self._barrier)
        words = UnitBatch(segments.texts, WORD_RE, self._hasher)
        hashes, owners, starts, lengths = [], [], [], []
        for n, h, start in words.windows(p.ngram_max):
            if n < p.ngram_min:
                continue
            hashes.append(h >> _SHIFT)
            owners.append(segments.sample[words.owner[start]])
            starts.append(start)
            lengths.append(np.full(start.shape[0], n, dtype=np.int64))
        if not hashes:
            empty = np.zeros(0, dtype=np.int64)
            return _NgramTable(np.zeros(0, dtype=np.uint64), empty, empty, empty, words, segments)
        return _NgramTable(
            np.concatenate(hashes), np.concatenate(owners), np.concatenate(starts), np.concatenate(lengths), words, segments
        )

    # -- frequency ----------------------------------------------------------------------------------------------

    @staticmethod
    def _context_ids(rollout: rlgen.Rollout, fields: list[str], with_prompt: bool) -> tuple[list[str], np.ndarray]:
        """Distinct context strings of the batch and each sample's index into them: the named meta fields, or
        where a sample has none of them and ``with_prompt`` is set, its prompt.

        The prompt stands in only for a missing context: beside one, what the prompt adds is its shared wording
        (instruction, few-shot examples), the same for every context, so a copy of it is a template by
        definition ("Book online" from an example ad, pasted into every ad)."""
        index: dict[str, int] = {}
        ids = np.empty(rollout.batch_size, dtype=np.int64)
        for i in range(rollout.batch_size):
            text = context_text(rollout.meta[i], fields) if rollout.meta is not None else ""
            if not text.strip() and with_prompt and rollout.prompt_texts is not None:
                text = rollout.prompt_texts[i]
            ids[i] = index.setdefault(text, len(index))
        return list(index), ids

    def _copied_from(self, rollout: rlgen.Rollout, table: _NgramTable, fields: list[str], with_prompt: bool) -> np.ndarray:
        """True for each n-gram occurrence that also occurs in its own sample's context (those fields, prompt)."""
        contexts, ctx_of_sample = self._context_ids(rollout, fields, with_prompt)
        if len(contexts) > _MAX_GROUPS:
            raise rlgen.PluginError(f"{self.name}: at most {_MAX_GROUPS} distinct contexts per batch, got {len(contexts)}")
        ctx_table = self._ngrams(NormalizedBatch(contexts).norms)
        if ctx_table.hash48.size == 0:
            return np.zeros(table.hash48.shape[0], dtype=bool)
        ctx_keys = np.unique((ctx_table.hash48 << _SHIFT) | ctx_table.text.astype(np.uint64))
        keys = (table.hash48 << _SHIFT) | ctx_of_sample[table.text].astype(np.uint64)
        return _member(keys, ctx_keys)

    def _classify_copies(self, rollout: rlgen.Rollout, table: _NgramTable) -> tuple[np.ndarray, np.ndarray]:
        """``(exempt, pasted)`` per n-gram occurrence (module docstring): exempt is an allowed use of the sample's
        own context (a copy of the searcher's words, or a copy of the rest no longer than ``mention_words``);
        pasted is a longer copy of the rest (a selling point or landing-page sentence, verbatim)."""
        p = self.params
        copied = self._copied_from(rollout, table, p.context_fields, with_prompt=True)
        if p.mention_words is None:
            return copied, np.zeros_like(copied)
        keywords = [f for f in p.keyword_fields if f in p.context_fields]
        exempt = copied & (table.n <= p.mention_words)
        long_copies = copied & ~exempt
        if keywords and long_copies.any():
            exempt |= long_copies & self._copied_from(rollout, table, keywords, with_prompt=False)
        return exempt, copied & ~exempt

    @staticmethod
    def _group_counts(hash48: np.ndarray, group_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct hashes and, for each, the number of distinct groups it occurs in."""
        if hash48.size == 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        pairs = np.sort((hash48 << _SHIFT) | group_idx.astype(np.uint64))
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]  # distinct (hash, group)
        h = pairs >> _SHIFT
        first = np.flatnonzero(np.concatenate(([True], h[1:] != h[:-1])))
        return h[first], np.diff(np.append(first, h.shape[0]))

    def _window_totals(self, cur_h: np.ndarray, cur_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct-group counts over the current batch plus the window, for hashes seen anywhere in them."""
        if not self._window:
            return cur_h, cur_c
        packed = np.concatenate([(cur_h << _SHIFT) | cur_c.astype(np.uint64)] + [w for w, _ in self._window])
        packed.sort()
        h = packed >> _SHIFT
        c = (packed & _LOW16).astype(np.int64)
        first = np.flatnonzero(np.concatenate(([True], h[1:] != h[:-1])))
        return h[first], np.add.reduceat(c, first)

    # -- scoring ------------------------------------------------------------------------------------------------

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        p = self.params
        b = rollout.batch_size
        batch = NormalizedBatch(rollout.texts)
        table = self._ngrams(batch.norms)
        _, group_idx = np.unique(rollout.group.cpu().numpy(), return_inverse=True)
        n_groups = int(group_idx.max()) + 1 if b else 0
        if n_groups > _MAX_GROUPS:
            raise rlgen.PluginError(f"{self.name}: at most {_MAX_GROUPS} prompts per batch, got {n_groups}")

        keep = pasted = None
        if p.exclude_context and table.hash48.size:
            exempt, pasted = self._classify_copies(rollout, table)
            keep = ~exempt
        kept_h = table.hash48 if keep is None else table.hash48[keep]
        kept_g = group_idx[table.text] if keep is None else group_idx[table.text[keep]]
        cur_h, cur_c = self._group_counts(kept_h, kept_g)

        total_groups = n_groups + sum(g for _, g in self._window)
        threshold = max(p.min_groups, math.ceil(p.min_group_fraction * total_groups - 1e-9))
        all_h, all_c = self._window_totals(cur_h, cur_c)
        frequent = all_h[all_c >= threshold]  # G_high (sorted), restricted below to what this batch contains

        flagged = _member(table.hash48, frequent)
        if keep is not None:
            flagged &= keep
        if p.penalize_pastes and pasted is not None:
            flagged |= pasted  # a template across the advertiser's contexts by construction (module docstring)

        spans, phrases = self._penalised_spans(batch, table, flagged)
        hit = rollout.spans_to_tokens(spans)
        # Eq. 5, second term: -lambda_2 * I(T_t in G_high); spans_to_tokens never marks padding
        values = torch.where(hit, torch.tensor(-float(p.penalty)), torch.tensor(0.0))

        self.last_frequent = self._top_frequent(batch, table, flagged, all_h, all_c)
        if self.last_frequent and p.log_frequent:
            log.info("frequent n-grams", reward=self.name, threshold=threshold, top=[
                f"{f['text']} ({f['groups']})" for f in self.last_frequent
            ])
        if p.window > 0:
            self._window.append(((cur_h << _SHIFT) | cur_c.astype(np.uint64), n_groups))
            del self._window[: -p.window]

        n_frequent_here = int(np.unique(table.hash48[flagged]).shape[0]) if flagged.any() else 0
        metrics = {
            "frequent_ngrams": float(n_frequent_here),
            "threshold_groups": float(threshold),
            "hit_rate": sum(1 for s in spans if s) / max(b, 1),
            "penalized_token_fraction": float(hit.sum()) / max(int(rollout.completion_mask.sum()), 1),
            # Eq. 4 as written counts frequent n-gram occurrences (not tokens); logged for comparison
            "frequent_occurrences_per_sample": float(flagged.sum()) / max(b, 1),
        }
        details = [{"ngrams": ph} for ph in phrases]
        return rlgen.RewardResult(values=values, details=details, metrics=metrics)

    def _penalised_spans(
        self, batch: NormalizedBatch, table: _NgramTable, flagged: np.ndarray
    ) -> tuple[list[list[tuple[int, int]]], list[list[str]]]:
        """Per sample, the original-text spans covered by flagged occurrences (overlapping ones merged)."""
        b = len(batch)
        spans: list[list[tuple[int, int]]] = [[] for _ in range(b)]
        phrases: list[list[str]] = [[] for _ in range(b)]
        if not flagged.any():
            return spans, phrases
        total = len(table.words)
        j = table.start[flagged]
        n = table.n[flagged]
        # words covered by some flagged n-gram, and the gaps between neighbouring words inside one n-gram: a run
        # of covered words joined by covered gaps is one span (the union of the overlapping occurrences)
        covered = np.cumsum(np.bincount(j, minlength=total + 1) - np.bincount(j + n, minlength=total + 1))[:total] > 0
        inner = np.cumsum(np.bincount(j, minlength=total + 1) - np.bincount(j + n - 1, minlength=total + 1))[:total] > 0
        prev_inner = np.concatenate(([False], inner[:-1]))
        run_first = np.flatnonzero(covered & ~prev_inner)
        run_last = np.flatnonzero(covered & ~inner)
        for a, z in zip(run_first.tolist(), run_last.tolist()):
            k, s, _ = table.char_span(a, 1)
            _, _, e = table.char_span(z, 1)
            os_, oe = batch.to_original(k, s, e)
            spans[k].append((os_, oe))
            phrases[k].append(batch.texts[k][os_:oe])
        return spans, phrases

    def _top_frequent(
        self, batch: NormalizedBatch, table: _NgramTable, flagged: np.ndarray, all_h: np.ndarray, all_c: np.ndarray
    ) -> list[dict[str, Any]]:
        """The step's most widespread frequent n-grams, longest forms first, sub-phrases of listed ones skipped."""
        top = self.params.log_top
        if top == 0 or not flagged.any():
            return []
        idx = np.flatnonzero(flagged)
        h, first = np.unique(table.hash48[idx], return_index=True)  # one occurrence per distinct frequent n-gram
        occ = idx[first]
        counts = all_c[np.searchsorted(all_h, h)]
        order = np.lexsort((-table.n[occ], -counts))  # most prompts first, then longest
        out: list[dict[str, Any]] = []
        for o in order.tolist():
            n = int(table.n[occ[o]])
            k, s, e = table.char_span(int(table.start[occ[o]]), n)
            text = batch.norms[k][s:e]
            if any(text in f["text"] for f in out):
                continue
            out.append({"text": text, "n": n, "groups": int(counts[o])})
            if len(out) >= top:
                break
        return out

    # -- resume ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": [torch.from_numpy(w.view(np.int64).copy()) for w, _ in self._window],
            "window_groups": [int(g) for _, g in self._window],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        arrays = [t.numpy().astype(np.int64).view(np.uint64) for t in state.get("window", [])]
        groups = [int(g) for g in state.get("window_groups", [])]
        if len(arrays) != len(groups):
            raise rlgen.PluginError(f"{self.name}: corrupt state: {len(arrays)} window batches, {len(groups)} group counts")
        self._window = list(zip(arrays, groups))[-self.params.window :] if self.params.window else []
