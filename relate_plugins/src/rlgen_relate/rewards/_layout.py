"""The ad layout: how a completion splits into named fields (title, description, ...).

``relate.format`` checks the layout and ``relate.length`` applies per-field limits, so both parse a completion
the same way, configured by the same :class:`LayoutSpec`. Three layouts:

- ``lines`` (default): one ``Label: value`` line per field, e.g. ``Title: ...`` then ``Description: ...``
  (labels are case-insensitive, a full-width colon works too, blank lines between fields are fine). A line
  without a label continues the field above it, which is a line break inside that field.
- ``json``: a JSON object whose string values are the fields.
- ``regex``: a user pattern with named groups, one per field, matched against the whole completion.
- ``none``: no fields; only whole-text rules apply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

import rlgen


class FieldSpec(rlgen.Params):
    name: str = Field(..., description="field name (JSON key / regex group name)")
    labels: list[str] = Field(default_factory=list, description="labels that introduce the field in the 'lines' layout")
    min_chars: int = Field(1, ge=0, description="fewest characters the field may have")
    max_chars: int | None = Field(None, ge=1, description="most characters the field may have (None: no limit)")
    required: bool = Field(True, description="the layout rule fails when the field is missing")


def _default_fields() -> list[FieldSpec]:
    # search-ad norms: a 30-character headline and a 90-character description
    return [
        FieldSpec(name="title", labels=["Title", "Headline", "标题"], max_chars=30),
        FieldSpec(name="description", labels=["Description", "Desc", "描述", "正文"], max_chars=90),
    ]


class LayoutSpec(rlgen.Params):
    kind: Literal["lines", "json", "regex", "none"] = Field("lines", description="how fields are laid out in the completion")
    fields: list[FieldSpec] = Field(default_factory=_default_fields, description="the ad's fields, in order")
    pattern: str | None = Field(None, description="for kind 'regex': a pattern with one named group per field")

    @model_validator(mode="after")
    def _check(self) -> "LayoutSpec":
        if self.kind == "regex":
            if not self.pattern:
                raise ValueError("layout.kind 'regex' needs layout.pattern")
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"layout.pattern is not a valid regex: {exc}") from exc
            missing = [f.name for f in self.fields if f.name not in compiled.groupindex]
            if missing:
                raise ValueError(f"layout.pattern has no named group for fields {missing}")
        if self.kind == "lines":
            unlabelled = [f.name for f in self.fields if not f.labels]
            if unlabelled:
                raise ValueError(f"layout.kind 'lines' needs labels for fields {unlabelled}")
        return self


@dataclass
class ParsedAd:
    fields: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # why the layout does not hold (missing field, stray text, ...)
    broken_fields: list[str] = field(default_factory=list)  # fields with a line break inside


class LayoutParser:
    """Parses completions according to one :class:`LayoutSpec` (patterns compiled once)."""

    def __init__(self, spec: LayoutSpec) -> None:
        self.spec = spec

    @cached_property
    def _line_re(self) -> re.Pattern[str]:
        alternatives = []
        for i, f in enumerate(self.spec.fields):
            labels = "|".join(re.escape(label) for label in sorted(f.labels, key=len, reverse=True))
            alternatives.append(f"(?P<f{i}>{labels})")
        # optional markup decoration around the label ("**Title:**") is tolerated here; relate.format's markup
        # rule reports it separately
        return re.compile(r"^[\s*_#>\-]*(?:" + "|".join(alternatives) + r")[\s*_]*[:：][\s*_]*(?P<value>.*)$", re.I)

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(self.spec.pattern or "", re.S)

    def parse(self, text: str) -> ParsedAd:
        kind = self.spec.kind
        if kind == "none":
            return ParsedAd()
        if kind == "lines":
            ad = self._parse_lines(text)
        elif kind == "json":
            ad = self._parse_json(text)
        else:
            ad = self._parse_regex(text)
        for f in self.spec.fields:
            value = ad.fields.get(f.name)
            if value is None or not value.strip():
                if f.required:
                    ad.errors.append(f"missing field '{f.name}'")
            elif "\n" in value or "\r" in value:
                ad.broken_fields.append(f.name)
        return ad

    def value_spans(self, text: str) -> dict[str, list[tuple[int, int]]]:
        """Where each field's value lies in ``text``: ``(start, end)`` character spans, one per line of the value
        (a field continued on unlabelled lines has several), stripped as :meth:`parse` strips them, so the
        characters :meth:`parse` counts for a field are these spans joined by line breaks.

        Layouts ``lines`` and ``regex``; ``json`` values are unescaped strings with no place in the text."""
        kind = self.spec.kind
        if kind == "json":
            raise ValueError("value_spans needs layout.kind 'lines' or 'regex' (a JSON value has no span in the text)")
        spans: dict[str, list[tuple[int, int]]] = {}
        if kind == "regex":
            lead = len(text) - len(text.lstrip())
            m = self._pattern.fullmatch(text.strip())
            if m is not None:
                for f in self.spec.fields:
                    if m.group(f.name) is not None:
                        spans[f.name] = [(lead + m.start(f.name), lead + m.end(f.name))]
            return spans
        if kind == "none":
            return spans
        current: str | None = None
        for line in re.finditer(r"[^\r\n]+", text):
            body = line.group()
            if not body.strip():
                continue
            m = self._line_re.match(body)
            if m is not None:
                current = next(f.name for i, f in enumerate(self.spec.fields) if m.group(f"f{i}") is not None)
                start, value = line.start() + m.start("value"), m.group("value")
                spans[current] = []  # a duplicate field: parse keeps the last one too
            elif current is None:
                continue
            else:
                start, value = line.start(), body
            lead = len(value) - len(value.lstrip())
            stripped = value.strip()
            if stripped or m is None:
                spans[current].append((start + lead, start + lead + len(stripped)))
        return spans

    def _parse_lines(self, text: str) -> ParsedAd:
        ad = ParsedAd()
        current: str | None = None
        for line in text.strip().splitlines():
            if not line.strip():
                continue
            m = self._line_re.match(line)
            if m is not None:
                name = next(f.name for i, f in enumerate(self.spec.fields) if m.group(f"f{i}") is not None)
                if name in ad.fields:
                    ad.errors.append(f"duplicate field '{name}'")
                ad.fields[name] = m.group("value").strip()
                current = name
            elif current is None:
                ad.errors.append("text before the first field")
            else:
                ad.fields[current] += "\n" + line.strip()
        return ad

    def _parse_json(self, text: str) -> ParsedAd:
        ad = ParsedAd()
        try:
            obj = json.loads(text.strip())
        except json.JSONDecodeError as exc:
            ad.errors.append(f"not valid JSON ({exc.msg})")
            return ad
        if not isinstance(obj, dict):
            ad.errors.append("JSON is not an object")
            return ad
        for f in self.spec.fields:
            if f.name in obj:
                if isinstance(obj[f.name], str):
                    ad.fields[f.name] = obj[f.name]
                else:
                    ad.errors.append(f"field '{f.name}' is not a string")
        return ad

    def _parse_regex(self, text: str) -> ParsedAd:
        ad = ParsedAd()
        m = self._pattern.fullmatch(text.strip())
        if m is None:
            ad.errors.append("does not match layout.pattern")
            return ad
        for f in self.spec.fields:
            if m.group(f.name) is not None:
                ad.fields[f.name] = m.group(f.name)
        return ad

