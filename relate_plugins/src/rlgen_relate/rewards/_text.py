"""Text helpers shared by the RELATE rewards: CJK handling, offset-preserving normalisation, clauses, hashed units.

Rewards match on a normalised text (NFKC + case folding, so "ＢＥＳＴ" and "Best" both hit "best") but must
report character spans of the *original* completion, because those spans are mapped to tokens through the
rollout's offsets; :class:`NormalizedBatch` keeps the way back. :class:`UnitBatch` turns the texts of a whole
batch into one array of stable 64-bit word hashes, so phrase lookup (``relate.risk``) and n-gram counting
(``relate.diversity``) run as numpy vector operations instead of Python loops over tokens.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Sequence

import numpy as np

# CJK ideographs, kana, hangul and CJK punctuation/full-width forms: scripts written without spaces, where a
# "word" is a character.
CJK_RANGES = (
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3040-\u30ff\u3100-\u312f\u3190-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7af\uf900-\ufaff"
    "\U00020000-\U0002fa1f"
)
CJK_CHAR = f"[{CJK_RANGES}]"
# a word character of a space-delimited script: \w minus CJK (Python's \w matches CJK too)
LATIN_WORD_CHAR = f"[^\\W{CJK_RANGES}]"
# a word for n-gram purposes: one CJK character, or a run of letters/digits of a space-delimited script
WORD_RE = re.compile(f"{CJK_CHAR}|{LATIN_WORD_CHAR}+")
# a unit for phrase matching: a word as above, or one symbol (so "No. 1", "100%" and "#1" keep their symbols)
UNIT_RE = re.compile(f"{CJK_CHAR}|{LATIN_WORD_CHAR}+|[^\\s\\w]")

_CJK_RE = re.compile(CJK_CHAR)
_SPACE_RE = re.compile(r"\s")


def cjk_fraction(text: str) -> float:
    """Share of CJK characters among the non-space characters of ``text`` (0 for an empty text)."""
    if text.isascii():
        return 0.0
    visible = len(text) - len(_SPACE_RE.findall(text))
    return len(_CJK_RE.findall(text)) / visible if visible else 0.0


def normalize_with_map(text: str) -> tuple[str, list[int] | None]:
    """NFKC + case folding, with the original index of every normalised character.

    Returns ``(normalised, index_map)``; ``index_map`` is None when normalisation kept a one-to-one alignment
    (the common case, checked cheaply), else a list of ``len(normalised) + 1`` original positions (the last one
    is ``len(text)``). Characters are normalised one at a time so every output character has one source.
    """
    if unicodedata.is_normalized("NFKC", text):
        folded = text.casefold()
        # case folding never shrinks a character, so equal length means a one-to-one alignment
        if len(folded) == len(text):
            return folded, None
    parts: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        out = unicodedata.normalize("NFKC", ch).casefold()
        parts.append(out)
        index.extend([i] * len(out))
    index.append(len(text))
    return "".join(parts), index


class NormalizedBatch:
    """The normalised texts of a batch (``norms``) and the way back to offsets in the original ``texts``."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.norms: list[str] = []
        self._maps: dict[int, list[int]] = {}
        for k, text in enumerate(self.texts):
            norm, index = normalize_with_map(text)
            self.norms.append(norm)
            if index is not None:
                self._maps[k] = index

    def __len__(self) -> int:
        return len(self.norms)

    def to_original(self, k: int, start: int, end: int) -> tuple[int, int]:
        """Original-text span of the normalised span ``[start, end)`` of sample ``k``."""
        index = self._maps.get(k)
        if index is None:
            return start, end
        # the end maps to one past the original character the last normalised character came from
        return index[start], (index[end - 1] + 1) if end > start else index[start]


def field_text(value: Any, list_separator: str = "; ") -> str:
    """A metadata value as text: strings as they are, lists joined, None as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return list_separator.join(field_text(v, list_separator) for v in value if v is not None)
    return str(value)


def context_text(meta: dict[str, Any] | None, fields: Sequence[str], separator: str = "\n") -> str:
    """The named metadata fields of one sample, joined; missing fields are skipped."""
    if not meta:
        return ""
    parts = [field_text(meta.get(f)) for f in fields]
    return separator.join(p for p in parts if p.strip())


# -- clauses and lemmas (English) ---------------------------------------------------------------------------------

_CLAUSE_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_FREE_OF = re.compile(r"-free\b", re.IGNORECASE)  # "interest-free" says there is no interest
_CLAUSE_END = re.compile(r"[.;:!?,\n]|\b(?:and|but)\b", re.IGNORECASE)

Word = tuple[str, int, int]  # (lemma, start, end) in the original text


def lemma(word: str) -> str:
    """``word`` case-folded, with a plural "s"/"es"/"ies" removed: "repairs" and "Repair" match."""
    w = word.casefold().replace("\u2019", "'")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ses", "xes", "ches", "shes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def clauses(text: str) -> list[list[Word]]:
    """The clauses of ``text`` (cut at punctuation, a line break, "and", "but"), each as its words' lemmas and spans.

    A word right before "-free" gets a leading "-" so that it equals no plain word: "interest-free" asserts that
    there is no interest. The "free" of such a compound is a word of its own, right after a hyphen.
    """
    out: list[list[Word]] = [[]]
    cut = [m.start() for m in _CLAUSE_END.finditer(text)]
    for m in _CLAUSE_WORD.finditer(text):
        while cut and cut[0] < m.start():
            cut.pop(0)
            out.append([])
        word = lemma(m.group())
        if _FREE_OF.match(text, m.end()):
            word = "-" + word
        out[-1].append((word, m.start(), m.end()))
    return [c for c in out if c]


# -- hashed units -----------------------------------------------------------------------------------------------

_PRIME = np.uint64(0x100000001B3)  # odd multiplier of the rolling hash (FNV prime)


class UnitHasher:
    """Stable 64-bit hashes of words (blake2b), cached: the same word hashes the same in every process."""

    def __init__(self, limit: int = 500_000) -> None:
        self._cache: dict[str, bytes] = {}
        self._limit = limit

    def __call__(self, words: Sequence[str]) -> np.ndarray:
        cache = self._cache
        if len(cache) > self._limit:
            cache.clear()
        digests = b"".join(
            [cache[w] if w in cache else cache.setdefault(w, hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest()) for w in words]
        )
        return np.frombuffer(digests, dtype=np.uint64) if words else np.zeros(0, dtype=np.uint64)


class UnitBatch:
    """The units of several texts, flattened: hashes, owning text, and each text's first unit index."""

    def __init__(self, texts: Sequence[str], pattern: re.Pattern[str], hasher: UnitHasher) -> None:
        self.pattern = pattern
        self.texts = texts
        units_per_text = [pattern.findall(t) for t in texts]
        self.counts = np.fromiter((len(u) for u in units_per_text), dtype=np.int64, count=len(texts))
        self.first = np.zeros(len(texts), dtype=np.int64)
        if len(texts) > 1:
            np.cumsum(self.counts[:-1], out=self.first[1:])
        self.hashes = hasher([u for us in units_per_text for u in us])
        self.owner = np.repeat(np.arange(len(texts), dtype=np.int64), self.counts)
        self._positions: dict[int, list[tuple[int, int]]] = {}

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    def windows(self, n_max: int):
        """Yield ``(n, hashes, starts)`` for n = 1..n_max: the rolling hash of every run of n units inside one
        text (runs crossing two texts are left out) and the flat index of its first unit. Vectorised."""
        units, owner, total = self.hashes, self.owner, len(self)
        h = units.copy()
        with np.errstate(over="ignore"):
            for n in range(1, n_max + 1):
                span = total - n + 1
                if span <= 0:
                    return
                if n > 1:
                    h = h[:span] * _PRIME + units[n - 1 :]  # h[j] = hash of units j..j+n-1, wrapping mod 2^64
                starts = np.flatnonzero(owner[:span] == owner[n - 1 :])
                yield n, h[starts], starts

    def char_span(self, k: int, first_unit: int, n: int) -> tuple[int, int]:
        """Character span in text ``k`` of its units ``first_unit .. first_unit + n - 1`` (flat indices)."""
        pos = self._positions.get(k)
        if pos is None:
            pos = self._positions[k] = [m.span() for m in self.pattern.finditer(self.texts[k])]
        a = first_unit - int(self.first[k])
        return pos[a][0], pos[a + n - 1][1]


def sequence_hash(units: np.ndarray) -> int:
    """The rolling hash :meth:`UnitBatch.windows` gives a run of exactly these units."""
    h = units[0]
    with np.errstate(over="ignore"):
        for u in units[1:]:
            h = h * _PRIME + u
    return int(h)
