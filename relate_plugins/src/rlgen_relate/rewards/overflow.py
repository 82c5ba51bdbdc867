"""``relate.overflow``: token-level penalty on the characters a field writes past its limit, and on the token that
ends a field short of its minimum (Eq. 5/7 style).

Search-ad fields have hard character limits (a 30-character title, a 90-character description): review rejects a
field over its limit or the serving system cuts it. ``relate.format`` scores that as one sentence-level verdict
and ``relate.length`` as a sentence-level distance, so GRPO spreads the blame over every token of the ad, the
well-chosen opening words as much as the clause that ran long. This reward puts ``-penalty`` on exactly the
tokens whose characters lie past a field's limit, so token-level credit (``relate.credit``, Eq. 7) pushes down
"one more clause" at the point where the field should have ended, and leaves the start of the ad alone.

With ``whole_words: true`` the penalty starts at the beginning of the word that crosses the limit instead: in
"Accessible Bathroom for Seniors" (31 characters) the 31st character is in the token "iors" after " Sen". Once
" Sen" is written, "iors" has a probability near 1, and the policy gradient of a token's log-probability scales
with one minus that probability, so a penalty there teaches little; the choice that overflowed was the word. It
is off by default: on the RELATE preset, three seeds of 48 steps gave the same eval compliance with it as
without (docs/demo.md, "round six").

A completion cut by ``max_new_tokens`` in the middle of a long field is penalised the same way: its tail is
past the limit. Limits come from the layout's ``max_chars`` (the same ones ``relate.format`` checks) unless
``max_chars`` overrides them per field.

A field shorter than its layout's ``min_chars`` (a description of "Free.") fails review too, but no character of it
is at fault: the fault is ending there. So the penalty goes on the one token that ended the field, the line break or
the stop/EOS token after its last character, and token-level credit pushes down "stop now" after a thin field. A
layout's default ``min_chars`` of 1 never fires on a field that has any text; give the field a larger one (pass
the layout ``relate.format`` checks, e.g. the RELATE preset's with ``min_chars: 30`` on the description) to turn
it on.
"""

from __future__ import annotations

import torch
from pydantic import Field

import rlgen

from ._layout import LayoutParser, LayoutSpec


class OverflowReward(rlgen.RewardProvider):
    name = "relate.overflow"
    description = ("Token-level penalty on the tokens of a field past its character limit (title over 30, description "
                   "over 90) and on the token that ends a field short of its layout's min_chars.")
    granularity = "token"

    class Params(rlgen.Params):
        penalty: float = Field(1.0, ge=0, description="penalty on each token with a character past its field's limit, "
                               "and on the token that ends a field short of its min_chars")
        layout: LayoutSpec = Field(default_factory=LayoutSpec, description="the ad's fields, their labels, min_chars and max_chars")
        max_chars: dict[str, int] = Field(
            default_factory=dict, description="per-field limit overriding the layout's max_chars, e.g. {title: 25}"
        )
        whole_words: bool = Field(False, description="start the penalty at the beginning of the word that crosses the "
                                  "limit (the choice that overflowed) instead of at the limit's character")

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        if p.layout.kind not in ("lines", "regex"):
            raise rlgen.PluginError(f"{self.name}: params.layout.kind must be 'lines' or 'regex', got {p.layout.kind!r}")
        known = {f.name for f in p.layout.fields}
        unknown = sorted(set(p.max_chars) - known)
        if unknown:
            raise rlgen.PluginError(f"{self.name}: params.max_chars names fields {unknown} that params.layout does not define (have {sorted(known)})")
        limits = {f.name: p.max_chars.get(f.name, f.max_chars) for f in p.layout.fields}
        self._limits = {name: limit for name, limit in limits.items() if limit is not None}
        if not self._limits:
            raise rlgen.PluginError(f"{self.name}: no field has a character limit (set layout fields' max_chars or params.max_chars)")
        self._minimums = {f.name: f.min_chars for f in p.layout.fields if f.min_chars > 1}
        self._parser = LayoutParser(p.layout)

    def overflow_spans(self, text: str) -> dict[str, tuple[int, int]]:
        """Per field over its limit, the ``(start, end)`` character span of ``text`` past the limit (from the start of
        the word that crosses it, with ``whole_words``).

        The field's characters are counted as :class:`LayoutParser` counts them (its lines joined by a line
        break), so this reward fires exactly when ``relate.format``'s ``field_length`` rule fails on length."""
        return self._overflows(text, self._parser.value_spans(text))

    def _overflows(self, text: str, values: dict[str, list[tuple[int, int]]]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for name, segments in values.items():
            limit = self._limits.get(name)
            if limit is None or not segments:
                continue
            budget = limit
            for i, (start, end) in enumerate(segments):
                if i:
                    budget -= 1  # the line break that joins this line to the field
                    if budget < 0:
                        out[name] = (start, segments[-1][1])
                        break
                if end - start > budget:
                    first = start + budget
                    if self.params.whole_words and not text[first].isspace():
                        while first > start and not text[first - 1].isspace():
                            first -= 1
                    out[name] = (first, segments[-1][1])
                    break
                budget -= end - start
        return out

    def short_ends(self, text: str) -> dict[str, int]:
        """Per field with text but fewer characters than its ``min_chars``: where it ends in ``text``.

        Characters are counted as :meth:`overflow_spans` counts them, so this fires exactly when
        ``relate.format``'s ``field_length`` rule fails on a too-short field."""
        return self._short_ends(self._parser.value_spans(text))

    def _short_ends(self, values: dict[str, list[tuple[int, int]]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, segments in values.items():
            minimum = self._minimums.get(name)
            if minimum is None or not segments:
                continue
            chars = sum(end - start for start, end in segments) + len(segments) - 1
            if 0 < chars < minimum:
                out[name] = segments[-1][1]
        return out

    @staticmethod
    def _ending_tokens(rollout: rlgen.Rollout, ends: list[dict[str, int]]) -> torch.Tensor:
        """BoolTensor [B, T]: for each end position, the first real token holding a character past it, or the
        empty-span stop/EOS token at it: the token whose choice ended the field. None after a cut text."""
        hit = torch.zeros(rollout.completion_ids.shape, dtype=torch.bool)
        if not any(ends):
            return hit
        starts, stops = rollout.token_offsets[..., 0], rollout.token_offsets[..., 1]
        for i, sample in enumerate(ends):
            for end in sample.values():
                after = rollout.completion_mask[i] & ((stops[i] > end) | (starts[i] >= end))
                first = after.nonzero()
                if len(first):
                    hit[i, first[0, 0]] = True
        return hit

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        parsed = [self._parser.value_spans(text) for text in rollout.texts]  # one parse serves both checks
        found = [self._overflows(t, v) for t, v in zip(rollout.texts, parsed)]
        short = [self._short_ends(v) for v in parsed]
        hit = rollout.spans_to_tokens([list(f.values()) for f in found]) | self._ending_tokens(rollout, short)
        values = torch.where(hit, torch.tensor(-float(self.params.penalty)), torch.tensor(0.0))  # Eq. 5 style
        details = [{"over": {name: text[s:e] for name, (s, e) in f.items()}, "short": sorted(sh)}
                   for text, f, sh in zip(rollout.texts, found, short)]
        b = max(len(found), 1)
        metrics = {
            "overflow_rate": sum(1 for f in found if f) / b,
            **{f"overflow_rate/{name}": sum(1 for f in found if name in f) / b for name in self._limits},
            **{f"short_rate/{name}": sum(1 for sh in short if name in sh) / b for name in self._minimums},
            "penalized_token_fraction": float(hit.sum()) / max(int(rollout.completion_mask.sum()), 1),
        }
        return rlgen.RewardResult(values=values, details=details, metrics=metrics)
