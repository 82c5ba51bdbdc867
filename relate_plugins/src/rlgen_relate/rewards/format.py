"""``relate.format``: sentence-level structural rules of ad serving and review (paper 3.3.1, Format Reward).

Built-in rules, each named in the details when it fails:

- ``layout``: the completion parses into the configured fields (default ``Title: ...`` / ``Description: ...``
  lines; JSON and regex layouts are configurable, see :mod:`._layout`), every required field present, no stray
  text, no field twice.
- ``field_length``: every present field within its character limits (default title 30, description 90).
- ``no_line_break_in_field``: a field's value stays on one line.
- ``no_prompt_echo``: no role marker or chat special token, and no run of ``echo_ngram`` words copied from
  the prompt that is not also part of the ad context (copying a selling point is fine, copying the
  instruction is not).
- ``no_emoji`` and ``no_markup`` (Markdown emphasis, headings, bullets, code, links, HTML tags).

User rules (``custom_rules``) add a named regex that must (or must not) match the whole text or one field.
The value is the mean over the evaluated rules of +1 (pass) / -1 (fail): 1 for a clean ad, -1 when every rule
fails; with ``all_or_nothing`` it is 1 or -1.
"""

from __future__ import annotations

import re
import torch
from pydantic import Field, field_validator

import rlgen

from ._layout import LayoutParser, LayoutSpec
from ._text import WORD_RE, context_text, normalize_with_map

BUILTIN_RULES = ("layout", "field_length", "no_line_break_in_field", "no_prompt_echo", "no_emoji", "no_markup")

_EMOJI_RE = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f900-\U0001f9ff\U00002b00-\U00002bff"
    "\U0000fe0f\U0000200d\U0001f1e6-\U0001f1ff\U00002300-\U000023ff]"
)
_MARKUP_RE = re.compile(
    r"\*\*|__|~~|`|^\s*#{1,6}\s|^\s*[-*+]\s+|^\s*\d+\.\s+(?=\S)|\[[^\]]*\]\([^)]*\)|</?[a-zA-Z][^>]*>",
    re.M,
)


class RegexRule(rlgen.Params):
    name: str = Field(..., description="rule name reported in the details when it fails")
    pattern: str = Field(..., description="regular expression (Python syntax), searched in the text")
    must_match: bool = Field(False, description="True: the pattern must occur; False: it must not occur")
    field: str | None = Field(None, description="apply to this layout field instead of the whole completion")
    ignore_case: bool = Field(True, description="match case-insensitively")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regex: {exc}") from exc
        return v


class FormatReward(rlgen.RewardProvider):
    name = "relate.format"
    description = "Structural ad rules (field layout, per-field character limits, no echo/emoji/markup); failed rules named."
    granularity = "sentence"

    class Params(rlgen.Params):
        layout: LayoutSpec = Field(default_factory=LayoutSpec, description="the ad's fields and how they are laid out")
        rules: list[str] = Field(default_factory=lambda: list(BUILTIN_RULES), description=f"built-in rules to apply, of {list(BUILTIN_RULES)}")
        custom_rules: list[RegexRule] = Field(default_factory=list, description="extra named regex rules")
        echo_ngram: int = Field(5, ge=2, description="no_prompt_echo: this many consecutive prompt words copied is an echo")
        echo_markers: list[str] = Field(
            default_factory=lambda: [r"(?im)^\s*(system|user|assistant|human|ai)\s*[:：]", r"<\|[^|>]{1,40}\|>", r"</?s>"],
            description="no_prompt_echo: regexes of chat leftovers (role labels, special tokens)",
        )
        context_fields: list[str] = Field(
            default_factory=lambda: ["query", "bid_word", "selling_points", "landing_page"],
            description="rollout.meta fields whose words may be copied without counting as prompt echo",
        )
        all_or_nothing: bool = Field(False, description="1 when every rule passes, else -1 (instead of the mean)")

        @field_validator("rules")
        @classmethod
        def _known(cls, v: list[str]) -> list[str]:
            unknown = [r for r in v if r not in BUILTIN_RULES]
            if unknown:
                raise ValueError(f"unknown rules {unknown}; built-in rules are {list(BUILTIN_RULES)}")
            return v

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self._parser = LayoutParser(p.layout)
        field_names = {f.name for f in p.layout.fields}
        for rule in p.custom_rules:
            if rule.field is not None and rule.field not in field_names:
                raise rlgen.PluginError(
                    f"{self.name}: params.custom_rules '{rule.name}' names field '{rule.field}' that params.layout "
                    f"does not define (have {sorted(field_names)})"
                )
        self._custom = [(r, re.compile(r.pattern, re.I if r.ignore_case else 0)) for r in p.custom_rules]
        self._markers = [re.compile(m) for m in p.echo_markers]
        self._prompt_ngrams: dict[tuple[str, str], set[tuple[str, ...]]] = {}

    def _echo_ngrams(self, prompt: str, context: str) -> set[tuple[str, ...]]:
        """n-grams of the prompt that are not n-grams of the context (cached per prompt)."""
        key = (prompt, context)
        found = self._prompt_ngrams.get(key)
        if found is None:
            n = self.params.echo_ngram
            found = _ngram_set(prompt, n) - _ngram_set(context, n)
            if len(self._prompt_ngrams) > 10_000:
                self._prompt_ngrams.clear()
            self._prompt_ngrams[key] = found
        return found

    def check(self, text: str, prompt: str | None = None, meta: dict | None = None) -> list[str]:
        """Names of the rules ``text`` fails."""
        p = self.params
        rules = set(p.rules)
        failed: list[str] = []
        ad = self._parser.parse(text) if p.layout.kind != "none" else None
        if "layout" in rules and ad is not None and ad.errors:
            failed.append("layout")
        if "field_length" in rules and ad is not None:
            for f in p.layout.fields:
                value = ad.fields.get(f.name)
                if value is None:
                    continue
                n = len(value.strip())
                if n < f.min_chars or (f.max_chars is not None and n > f.max_chars):
                    failed.append("field_length")
                    break
        if "no_line_break_in_field" in rules and ad is not None and ad.broken_fields:
            failed.append("no_line_break_in_field")
        if "no_prompt_echo" in rules and self._is_echo(text, prompt, meta):
            failed.append("no_prompt_echo")
        if "no_emoji" in rules and _EMOJI_RE.search(text):
            failed.append("no_emoji")
        if "no_markup" in rules and _MARKUP_RE.search(text):
            failed.append("no_markup")
        for rule, pattern in self._custom:
            target = text if rule.field is None else (ad.fields.get(rule.field, "") if ad is not None else "")
            if bool(pattern.search(target)) != rule.must_match:
                failed.append(rule.name)
        return failed

    def _is_echo(self, text: str, prompt: str | None, meta: dict | None) -> bool:
        if any(m.search(text) for m in self._markers):
            return True
        if not prompt:
            return False
        echo = self._echo_ngrams(prompt, context_text(meta, self.params.context_fields))
        return bool(echo) and not echo.isdisjoint(_ngram_set(text, self.params.echo_ngram))

    @property
    def n_rules(self) -> int:
        return len(self.params.rules) + len(self._custom)

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        p = self.params
        total = max(self.n_rules, 1)
        values: list[float] = []
        details: list[dict] = []
        counts: dict[str, int] = {}
        for i, text in enumerate(rollout.texts):
            prompt = rollout.prompt_texts[i] if rollout.prompt_texts is not None else None
            meta = rollout.meta[i] if rollout.meta is not None else None
            failed = self.check(text, prompt, meta)
            for name in failed:
                counts[name] = counts.get(name, 0) + 1
            if p.all_or_nothing:
                values.append(-1.0 if failed else 1.0)
            else:
                values.append(1.0 - 2.0 * len(failed) / total)
            details.append({"failed": failed})
        b = max(len(values), 1)
        metrics = {"pass_rate": sum(1 for d in details if not d["failed"]) / b}
        metrics.update({f"fail/{name}": c / b for name, c in sorted(counts.items())})
        return rlgen.RewardResult(values=torch.tensor(values, dtype=torch.float32), details=details, metrics=metrics)


def _ngram_set(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD_RE.findall(normalize_with_map(text)[0])
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

