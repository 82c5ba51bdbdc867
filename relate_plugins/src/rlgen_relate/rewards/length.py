"""``relate.length``: sentence-level length reward (paper 3.3.1, Length Reward).

A target interval of completion length: ``reward_inside`` inside it, and outside a penalty that grows linearly
with the distance to the interval, capped at ``max_penalty``. Length is counted in policy tokens for
space-delimited text and in characters for CJK text (where a token count depends too much on the tokenizer);
``unit: auto`` picks per sample. Ads with fields (title, description, see :mod:`._layout`) can have a
character interval per field; the reward is then the mean over the whole-text check and the fields present
(a missing field is ``relate.format``'s business, not this reward's).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

import rlgen

from ._layout import LayoutParser, LayoutSpec
from ._text import cjk_fraction


class Interval(rlgen.Params):
    min: int = Field(0, ge=0, description="shortest length inside the interval")
    max: int | None = Field(None, ge=0, description="longest length inside the interval (None: no upper limit)")

    @model_validator(mode="after")
    def _ordered(self) -> "Interval":
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class LengthReward(rlgen.RewardProvider):
    name = "relate.length"
    description = "Positive inside a target length interval (tokens, or characters for CJK), a growing penalty outside."
    granularity = "sentence"

    class Params(rlgen.Params):
        unit: Literal["auto", "tokens", "chars"] = Field(
            "auto", description="count tokens, characters, or per sample: characters when most of the text is CJK"
        )
        tokens: Interval = Field(
            default_factory=lambda: Interval(min=8, max=48), description="target interval in completion tokens"
        )
        chars: Interval = Field(
            default_factory=lambda: Interval(min=10, max=120), description="target interval in characters (CJK text)"
        )
        field_chars: dict[str, Interval] = Field(
            default_factory=dict,
            description="optional character interval per layout field, e.g. {title: {max: 30}, description: {max: 90}}",
        )
        layout: LayoutSpec = Field(default_factory=LayoutSpec, description="how fields are found (used with field_chars)")
        cjk_threshold: float = Field(0.5, ge=0, le=1, description="unit auto: share of CJK characters from which chars are counted")
        reward_inside: float = Field(1.0, description="reward of a length inside the interval")
        penalty_per_token: float = Field(0.05, ge=0, description="penalty per token outside the token interval")
        penalty_per_char: float = Field(0.02, ge=0, description="penalty per character outside a character interval")
        max_penalty: float = Field(1.0, ge=0, description="cap of the penalty (so a runaway sample is not an outlier)")

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        unknown = {f.name for f in self.params.layout.fields}
        missing = sorted(set(self.params.field_chars) - unknown)
        if missing and self.params.layout.kind != "none":
            raise rlgen.PluginError(
                f"{self.name}: params.field_chars names fields {missing} that params.layout does not define "
                f"(have {sorted(unknown)})"
            )
        self._parser = LayoutParser(self.params.layout)

    def _term(self, length: int, interval: Interval, per_unit: float) -> float:
        p = self.params
        if length < interval.min:
            distance = interval.min - length
        elif interval.max is not None and length > interval.max:
            distance = length - interval.max
        else:
            return p.reward_inside
        return -min(p.max_penalty, per_unit * distance) or 0.0  # no -0.0 when the penalty is switched off

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        p = self.params
        mask = rollout.completion_mask
        if rollout.token_offsets is not None:
            # tokens that produce text: EOS and other invisible tokens do not make an ad longer
            visible = mask & (rollout.token_offsets[..., 1] > rollout.token_offsets[..., 0])
        else:
            visible = mask
        n_tokens = visible.sum(dim=1).tolist()
        values: list[float] = []
        details: list[dict] = []
        for text, tokens in zip(rollout.texts, n_tokens):
            use_chars = p.unit == "chars" or (p.unit == "auto" and cjk_fraction(text) >= p.cjk_threshold)
            if use_chars:
                length = len(text.strip())
                terms = [self._term(length, p.chars, p.penalty_per_char)]
            else:
                length = int(tokens)
                terms = [self._term(length, p.tokens, p.penalty_per_token)]
            detail: dict = {"unit": "chars" if use_chars else "tokens", "length": length}
            if p.field_chars:
                fields = self._parser.parse(text).fields
                detail["fields"] = {}
                for name, interval in p.field_chars.items():
                    if name in fields:
                        n = len(fields[name].strip())
                        detail["fields"][name] = n
                        terms.append(self._term(n, interval, p.penalty_per_char))
            values.append(sum(terms) / len(terms))
            details.append(detail)
        v = torch.tensor(values, dtype=torch.float32)
        inside = float((v == p.reward_inside).float().mean()) if len(values) else 0.0
        return rlgen.RewardResult(values=v, details=details, metrics={"inside_fraction": inside})
