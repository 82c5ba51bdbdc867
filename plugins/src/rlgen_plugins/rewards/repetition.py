"""``repetition``: token-level penalty on a word or phrase that a completion repeats (RELATE paper Eq. 5/7 style).

RL on text finds stutter quickly: "Transmission Transmission", "Lease Lease Lease Leasing", "Emergency emergency."
Sentence-level rewards cannot tell which tokens made an ad read badly; this reward puts ``-penalty`` on the
tokens of each *repeat* (never on the first mention), so token-level credit (``relate.credit``, Eq. 7) pushes
down exactly the repeated words.

What counts as a repeat, inside one line of one completion (a line is a field of an ad, "Title: ..."):

- **stutter**: a word right after the same word, case-insensitively and inflection-aware: two words with the
  same stem of at least ``stem_min_chars`` characters once an inflection (-s, -es, -ies, -ed, -ing, a final -e)
  is taken off count as the same word ("Lease Leasing", "repair repairs"; not "care career", not "new news"). ``word_gap`` lets a few words stand between the two mentions.
  Also a phrase right after itself ("book now book now", "紧急紧急").
- **repeated phrase**: an n-gram of ``ngram_min`` or more words (``cjk_ngram_min`` characters for Chinese or
  Japanese) that occurs again later in the line (``cross_lines`` extends this to the whole completion).

Not repeats: a lone number ("1 on 1", "2 for 2"; a number of several parts said twice is: "Rated 4.9 for
4.9", "24/7 24/7"), phrases made only of stop words ("in the"), a CJK
character doubled ("天天", "看看": reduplication is grammar), and line labels such as "Title:" (``labels``). A
title and a description may both name the product: the keyword in both fields is ordinary practice, so by default
phrase repeats are looked for within a line.

Word-level matching rather than policy-token matching keeps the rule independent of the tokenizer; the word's
character span is mapped to the tokens that overlap it by :meth:`rlgen.Rollout.spans_to_tokens`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import torch
from pydantic import Field, field_validator, model_validator

import rlgen

# Chinese and Japanese characters (ideographs, kana): scripts without spaces, where every character is a unit.
_CJK_RANGES = (
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3040-\u30ff\u3100-\u312f\u3190-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
)
_CJK_CHAR = re.compile(f"[{_CJK_RANGES}]")
_UNIT_RE = re.compile(f"[{_CJK_RANGES}]|[^\\W_{_CJK_RANGES}]+(?:['’][^\\W_{_CJK_RANGES}]+)*")
_LINE_RE = re.compile(r"[^\n]+")

# Function words: a phrase made only of these is grammar, not a repeat ("in the", "for your").
STOP_WORDS = frozenset(
    """a about after all also an and any are as at be been but by can do does for from get has have here how i if in
    into is it its just may more most my no not now of on one only or our out over so some such than that the their
    them then there these they this those to too up us very was we were what when where which while who will with
    you your 's""".split()
)


@dataclass(frozen=True)
class _Unit:
    """One word (or CJK character) of a completion: original span, match key, and what kind of unit it is."""

    start: int
    end: int
    key: str
    cjk: bool
    number: bool
    stop: bool


def _units(text: str, labels: re.Pattern[str] | None) -> list[list[_Unit]]:
    """The units of each line of ``text``, with label text (e.g. "Title:") left out."""
    lines: list[list[_Unit]] = []
    for line in _LINE_RE.finditer(text):
        skip_to = line.start()
        if labels is not None:
            m = labels.match(line.group())
            if m is not None:
                skip_to += m.end()
        units = []
        for m in _UNIT_RE.finditer(text, line.start(), line.end()):
            if m.start() < skip_to:
                continue
            key = unicodedata.normalize("NFKC", m.group()).casefold()
            units.append(_Unit(m.start(), m.end(), key, bool(_CJK_CHAR.fullmatch(m.group())), key.isdigit(), key in STOP_WORDS))
        lines.append(units)
    return lines


_INFLECTION = re.compile(r"(?:ing|ies|es|ed|s|e)$")


def _inflection_stem(word: str) -> str:
    """The word without one inflectional ending: 'leasing', 'leases', 'leased', 'lease' -> 'leas'.

    Only inflections, no derivations (-er, -ly, -ness): "care" and "career" are different words."""
    if word.endswith("ies"):
        return word[:-3] + "y"
    return _INFLECTION.sub("", word)


class RepetitionReward(rlgen.RewardProvider):
    name = "repetition"
    description = "Token-level penalty on the tokens of a word or phrase a completion repeats (stutter, repeated n-grams)."
    granularity = "token"

    class Params(rlgen.Params):
        penalty: float = Field(1.0, ge=0, description="lambda: penalty on each token of a repeat (the first mention is free)")
        stem_min_chars: int = Field(
            4, ge=1, description="two different words stutter when, without their inflection, they are the same stem "
            "of at least this many characters ('lease'/'leasing': 'leas')"
        )
        word_gap: int = Field(
            0, ge=0, description="words allowed between two mentions of one word for it to be a stutter (0: adjacent only)"
        )
        ngram_min: int = Field(2, ge=1, description="shortest repeated phrase, in words, penalised at any distance in the line")
        ngram_max: int = Field(6, ge=1, description="longest repeated phrase looked for, in words (CJK: characters)")
        cjk_ngram_min: int = Field(
            4, ge=2, description="shortest repeated all-CJK phrase, in characters, penalised at a distance (adjacent: 2)"
        )
        cross_lines: bool = Field(
            False, description="look for repeated phrases over the whole completion, not only within one line "
            "(stutter is always within a line)"
        )
        ignore_numbers: bool = Field(
            True, description="a lone number is never a repeat ('1 on 1'); a number of several parts said twice is "
            "('4.9 for 4.9', '24/7 24/7'); False: numbers count as words"
        )
        labels: str | None = Field(
            r"^[ \t*#>-]*[^\W\d_]+(?: [^\W\d_]+)?[ \t]*[:：]",
            description="regex of a line label whose words are no part of any repeat ('Title:'); None to keep them",
        )

        @field_validator("labels")
        @classmethod
        def _valid_regex(cls, v: str | None) -> str | None:
            if v is not None:
                try:
                    re.compile(v)
                except re.error as exc:
                    raise ValueError(f"labels {v!r} is not a valid regex: {exc}") from exc
            return v

        @model_validator(mode="after")
        def _range(self) -> "RepetitionReward.Params":
            if self.ngram_max < self.ngram_min:
                raise ValueError(f"ngram_max ({self.ngram_max}) must be >= ngram_min ({self.ngram_min})")
            return self

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        self._labels = re.compile(self.params.labels) if self.params.labels else None

    # -- what is a repeat ---------------------------------------------------------------------------------------

    def _same_word(self, a: _Unit, b: _Unit) -> bool:
        if a.cjk or b.cjk:  # a doubled CJK character is reduplication (天天), not stutter
            return False
        if a.key == b.key:
            return True
        stem = _inflection_stem(a.key)
        return len(stem) >= self.params.stem_min_chars and stem == _inflection_stem(b.key)

    def _countable(self, units: list[_Unit]) -> bool:
        """A phrase can be a repeat when it has a word that is neither a stop word nor (if ignored) a number, or
        two numbers: a number of several parts ("4.9", "24/7", "1,100") said twice reads as stutter ("Rated 4.9
        for 4.9"), where a lone number said twice is ordinary ("1 on 1", "2 for 2")."""
        if any(not u.stop and not (u.number and self.params.ignore_numbers) for u in units):
            return True
        return sum(u.number for u in units) >= 2

    def _stutters(self, line: list[_Unit], out: dict[int, str]) -> None:
        """Mark units that repeat the word (or phrase) just before them."""
        p = self.params
        for i in range(1, len(line)):
            u = line[i]
            if u.number and p.ignore_numbers:
                continue
            if any(self._same_word(line[j], u) for j in range(max(0, i - 1 - p.word_gap), i)):
                out.setdefault(i, "stutter")
        for n in range(2, p.ngram_max + 1):
            for i in range(n, len(line) - n + 1):
                first, second = line[i - n : i], line[i : i + n]
                if [x.key for x in first] == [x.key for x in second] and self._countable(second):
                    for j in range(i, i + n):
                        out.setdefault(j, "stutter")

    def _phrase_repeats(self, units: list[_Unit], out: dict[int, str]) -> None:
        """Mark units of an n-gram that already occurred earlier (not overlapping) in ``units``."""
        p = self.params
        for n in range(p.ngram_max, p.ngram_min - 1, -1):
            first_at: dict[tuple[str, ...], int] = {}
            for i in range(len(units) - n + 1):
                gram = units[i : i + n]
                if all(u.cjk for u in gram) and n < p.cjk_ngram_min:
                    continue
                key = tuple(u.key for u in gram)
                at = first_at.setdefault(key, i)
                if at + n <= i and self._countable(gram):
                    for j in range(i, i + n):
                        out.setdefault(j, "phrase")

    def find_repeats(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, kind)`` of every repeated unit of ``text``, kind ``stutter`` or ``phrase``, in order."""
        lines = _units(text, self._labels)
        found: list[tuple[int, int, str]] = []
        for line in lines:
            marks: dict[int, str] = {}
            self._stutters(line, marks)
            if not self.params.cross_lines:
                self._phrase_repeats(line, marks)
            found += [(line[i].start, line[i].end, kind) for i, kind in marks.items()]
        if self.params.cross_lines:
            flat = [u for line in lines for u in line]
            marks = {}
            self._phrase_repeats(flat, marks)
            found += [(flat[i].start, flat[i].end, kind) for i, kind in marks.items()]
        return sorted(set(found))

    # -- scoring ------------------------------------------------------------------------------------------------

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        repeats = [self.find_repeats(text) for text in rollout.texts]
        hit = rollout.spans_to_tokens([[(s, e) for s, e, _ in r] for r in repeats])
        # Eq. 5/7 style: -lambda * I(token belongs to a repeat); spans_to_tokens never marks padding
        values = torch.where(hit, torch.tensor(-float(self.params.penalty)), torch.tensor(0.0))
        details = [
            {"repeats": [text[s:e] for s, e, _ in r], "kinds": [k for _, _, k in r]} for text, r in zip(rollout.texts, repeats)
        ]
        b = max(len(repeats), 1)
        metrics = {
            "repeat_rate": sum(1 for r in repeats if r) / b,
            "stutter_rate": sum(1 for r in repeats if any(k == "stutter" for _, _, k in r)) / b,
            "penalized_token_fraction": float(hit.sum()) / max(int(rollout.completion_mask.sum()), 1),
        }
        return rlgen.RewardResult(values=values, details=details, metrics=metrics)
