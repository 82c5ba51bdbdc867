"""Finding words and phrases in text: the character spans the rewards score.

Both rewards work on character spans of the decoded completion; mapping spans to tokens is
rlgen's job (``Rollout.spans_to_tokens``), so nothing here knows about tokenizers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

# a word: letters, optionally joined by an apostrophe or hyphen (don't, eco-friendly);
# digits and punctuation are never words, so prices and "20%" are never penalised
WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")


def read_list(path: str | Path) -> list[str]:
    """Entries of a list file: one word or phrase per line; blank lines and ``#`` comments skipped."""
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line)
    return entries


def fold(text: str, case_sensitive: bool) -> str:
    return text if case_sensitive else text.casefold()


def phrase_pattern(phrases: Iterable[str], case_sensitive: bool) -> re.Pattern[str] | None:
    """One regex matching any phrase as whole words; whitespace inside a phrase matches any run of it.

    Longer phrases come first so that "free shipping" wins over "free".
    """
    unique = sorted({p.strip() for p in phrases if p.strip()}, key=lambda p: (-len(p), p))
    if not unique:
        return None
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in p.split()) for p in unique)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", 0 if case_sensitive else re.IGNORECASE)


def find_phrases(pattern: re.Pattern[str] | None, text: str) -> list[tuple[int, int, str]]:
    """(start, end, matched text) of every non-overlapping phrase occurrence."""
    if pattern is None:
        return []
    return [(m.start(), m.end(), m.group()) for m in pattern.finditer(text)]


def words(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, word) of every word in ``text``."""
    for m in WORD.finditer(text):
        yield m.start(), m.end(), m.group()


def overlaps(start: int, end: int, spans: list[tuple[int, int, str]]) -> bool:
    return any(s < end and start < e for s, e, _ in spans)


def meta_strings(value: object) -> list[str]:
    """The strings of a metadata value: a string, or the strings of a list (nested one level)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []
