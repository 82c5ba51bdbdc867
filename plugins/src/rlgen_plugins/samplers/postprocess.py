"""Named completion post-processors: keep the part of a completion that rewards should judge.

Each post-processor keeps one contiguous slice of the text (``span(text) -> (start, end)``),
which is what makes character offsets easy to keep true: a token's span shifts by ``start``
and is clipped to the kept slice, and a token whose text lies wholly outside it was removed
by post-processing. Steps are chained in the order the config lists them.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import pydantic

import rlgen
from rlgen import PluginError

Span = tuple[int, int]


class PostProcessor(abc.ABC):
    """Base: a named, configurable step that keeps ``text[start:end]``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[rlgen.Params]] = rlgen.Params

    def __init__(self, params: rlgen.Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abc.abstractmethod
    def span(self, text: str) -> Span:
        """``(start, end)`` of the slice of ``text`` to keep, ``0 <= start <= end <= len(text)``."""


class FirstLine(PostProcessor):
    name = "first_line"
    description = "keep the first non-empty line"

    class Params(rlgen.Params):
        skip_blank: bool = pydantic.Field(True, description="skip leading blank lines before taking the first line")

    def span(self, text: str) -> Span:
        start = 0
        if self.params.skip_blank:
            while True:
                nl = text.find("\n", start)
                if nl < 0 or text[start:nl].strip():
                    break
                start = nl + 1
        nl = text.find("\n", start)
        return start, (len(text) if nl < 0 else nl)


class Strip(PostProcessor):
    name = "strip"
    description = "remove leading and trailing whitespace (or the given characters)"

    class Params(rlgen.Params):
        chars: str | None = pydantic.Field(None, description="characters to strip; default: whitespace")

    def span(self, text: str) -> Span:
        chars = self.params.chars
        start = len(text) - len(text.lstrip(chars))
        end = len(text.rstrip(chars))
        return (start, max(start, end))


class StripQuotes(PostProcessor):
    name = "strip_quotes"
    description = "remove whitespace and quotation marks that enclose the whole completion"

    class Params(rlgen.Params):
        pairs: list[str] = pydantic.Field(
            default_factory=lambda: ['""', "''", "\u201c\u201d", "\u2018\u2019", "\u00ab\u00bb", "\u300c\u300d", "``"],
            description="two-character strings: an opening and a closing quote",
        )
        unmatched: bool = pydantic.Field(
            False, description="also remove a lone opening quote at the start or closing quote at the end"
        )

        @pydantic.field_validator("pairs")
        @classmethod
        def _two_chars(cls, pairs: list[str]) -> list[str]:
            bad = [p for p in pairs if len(p) != 2]
            if bad:
                raise ValueError(f"each pair must be exactly two characters, got {bad}")
            return pairs

    def span(self, text: str) -> Span:
        start, end = 0, len(text)
        opening = {p[0] for p in self.params.pairs}
        closing = {p[1] for p in self.params.pairs}
        while True:
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if end - start >= 2 and text[start] + text[end - 1] in self.params.pairs:
                start, end = start + 1, end - 1
            elif self.params.unmatched and start < end and text[start] in opening:
                start += 1
            elif self.params.unmatched and start < end and text[end - 1] in closing:
                end -= 1
            else:
                return start, end


class MaxChars(PostProcessor):
    name = "max_chars"
    description = "keep at most the first N characters"

    class Params(rlgen.Params):
        n: int = pydantic.Field(..., ge=0, description="number of characters to keep")

    def span(self, text: str) -> Span:
        return 0, min(len(text), self.params.n)


POSTPROCESSORS: dict[str, type[PostProcessor]] = {cls.name: cls for cls in (FirstLine, Strip, StripQuotes, MaxChars)}


class PostProcessStep(rlgen.Params):
    """One configured step: ``{name: first_line, params: {...}}`` (a bare name is accepted too)."""

    name: str = pydantic.Field(..., description=f"one of {sorted(POSTPROCESSORS)}")
    params: dict[str, Any] = pydantic.Field(default_factory=dict, description="the step's own parameters")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @pydantic.model_validator(mode="after")
    def _check(self) -> "PostProcessStep":
        build_postprocessor(self)  # fail at config time, naming the step and field
        return self


def build_postprocessor(step: PostProcessStep) -> PostProcessor:
    """Instantiate a configured step; errors name the step and the bad field."""
    cls = POSTPROCESSORS.get(step.name)
    if cls is None:
        raise ValueError(f"unknown post-processor '{step.name}'; known: {sorted(POSTPROCESSORS)}")
    try:
        return cls(cls.Params.model_validate(step.params))
    except pydantic.ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(params)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"post-processor '{step.name}': {fields}") from None


def apply_chain(processors: list[PostProcessor], text: str) -> Span:
    """The slice of ``text`` that survives every step in order, as ``(start, end)`` into ``text``."""
    start, end = 0, len(text)
    for proc in processors:
        s, e = proc.span(text[start:end])
        if not (0 <= s <= e <= end - start):
            raise PluginError(f"post-processor '{proc.name}' returned an invalid span ({s}, {e})")
        start, end = start + s, start + e
    return start, end
