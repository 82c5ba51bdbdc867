"""The two brand-voice reward providers and their registration with rlgen.

``brand.off_vocabulary`` is token-level: a banned word is the fault of the tokens that spell
it, so the penalty sits on exactly those tokens and a token-aware combiner (e.g.
``relate.credit``) can blame them alone; summed over tokens (paper Eq. 4) it is a sentence
penalty for sentence-level combiners such as ``grpo``. ``brand.required_mention`` is
sentence-level: whether an ad names the brand is a property of the whole text.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field, field_validator, model_validator

import rlgen

from .text import find_phrases, fold, meta_strings, overlaps, phrase_pattern, read_list, words


def _existing_file(path: str | None) -> str | None:
    if path is not None and not Path(path).is_file():
        raise ValueError(f"file {path} does not exist")
    return path


class OffVocabulary(rlgen.RewardProvider):
    """Penalises the tokens of banned words and, with a vocabulary, of words off it.

    Per completion token t of sample i:

        r[i, t] = -banned_penalty          if t overlaps a banned word or phrase
                  -off_vocabulary_penalty  if t overlaps a word not in the vocabulary
                  0                        otherwise (and on padding)

    A token that overlaps both gets the larger penalty once. A word split into k tokens costs
    k times the penalty when summed; numbers and punctuation are never penalised.
    """

    name = "brand.off_vocabulary"
    granularity = "token"
    description = "token-level: penalises every token of a banned word, and of words off the brand's vocabulary"

    class Params(rlgen.Params):
        banned: list[str] = Field(
            default_factory=list, description="words or phrases the brand never uses (matched as whole words)"
        )
        banned_file: str | None = Field(None, description="file of more banned words/phrases, one per line, # comments")
        vocabulary: list[str] = Field(
            default_factory=list,
            description="the brand's approved words; when given (here or in vocabulary_file), every other word is off-vocabulary",
        )
        vocabulary_file: str | None = Field(None, description="file of more approved words, one per line, # comments")
        banned_penalty: float = Field(1.0, ge=0, description="penalty per token of a banned word or phrase")
        off_vocabulary_penalty: float = Field(0.2, ge=0, description="penalty per token of a word off the vocabulary")
        allow_prompt_words: bool = Field(
            True, description="words of the sample's prompt and of its metadata strings count as approved (the product named)"
        )
        case_sensitive: bool = Field(False, description="match words and phrases with their case")

        check_files = field_validator("banned_file", "vocabulary_file")(_existing_file)

        @model_validator(mode="after")
        def check_something_to_check(self):
            if not (self.banned or self.banned_file or self.vocabulary or self.vocabulary_file):
                raise ValueError("set banned, banned_file, vocabulary or vocabulary_file: there is nothing to check")
            return self

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        banned = list(p.banned) + (read_list(p.banned_file) if p.banned_file else [])
        self._banned = phrase_pattern(banned, p.case_sensitive)
        vocabulary = list(p.vocabulary) + (read_list(p.vocabulary_file) if p.vocabulary_file else [])
        self._vocabulary = {fold(w, p.case_sensitive) for w in vocabulary} if vocabulary else None

    def _approved_extra(self, rollout: rlgen.Rollout, i: int) -> set[str]:
        """Words the sample's own prompt brings (the product and brand it is about)."""
        if not self.params.allow_prompt_words:
            return set()
        texts = []
        if rollout.prompt_texts is not None:
            texts.append(rollout.prompt_texts[i])
        if rollout.meta is not None:
            for value in rollout.meta[i].values():
                texts += meta_strings(value)
        return {fold(w, self.params.case_sensitive) for t in texts for _, _, w in words(t)}

    def find(self, rollout: rlgen.Rollout, i: int) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
        """(banned spans, off-vocabulary spans) in sample ``i``'s completion."""
        text = rollout.texts[i]
        banned = find_phrases(self._banned, text)
        off: list[tuple[int, int, str]] = []
        if self._vocabulary is not None:
            approved = self._vocabulary | self._approved_extra(rollout, i)
            off = [
                (s, e, w) for s, e, w in words(text)
                if fold(w, self.params.case_sensitive) not in approved and not overlaps(s, e, banned)
            ]
        return banned, off

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        found = [self.find(rollout, i) for i in range(rollout.batch_size)]
        banned_tokens = rollout.spans_to_tokens([[(s, e) for s, e, _ in b] for b, _ in found])
        off_tokens = rollout.spans_to_tokens([[(s, e) for s, e, _ in o] for _, o in found])
        values = -torch.maximum(
            self.params.banned_penalty * banned_tokens.float(), self.params.off_vocabulary_penalty * off_tokens.float()
        )
        n = max(rollout.batch_size, 1)
        return rlgen.RewardResult(
            values=values,
            details=[{"banned": [w for _, _, w in b], "off_vocabulary": [w for _, _, w in o]} for b, o in found],
            metrics={
                "banned_per_sample": sum(len(b) for b, _ in found) / n,
                "off_vocabulary_per_sample": sum(len(o) for _, o in found) / n,
                "clean_fraction": sum(1 for b, o in found if not b and not o) / n,
            },
        )


class RequiredMention(rlgen.RewardProvider):
    """``present`` when the completion names the brand (or an accepted phrase), else ``absent``.

    Accepted mentions of sample i: ``brand``, every entry of ``phrases``, and the value(s) of
    ``meta_field`` in the sample's prompt metadata (so one dataset can carry many brands).
    With ``within_chars`` the mention must start in the first N characters (the headline).
    """

    name = "brand.required_mention"
    granularity = "sentence"
    description = "sentence-level: rewards completions that mention the brand name or an accepted phrase"

    class Params(rlgen.Params):
        brand: str | None = Field(None, description="the brand name; always an accepted mention")
        phrases: list[str] = Field(default_factory=list, description="other accepted mentions (product lines, slogans)")
        meta_field: str | None = Field(
            "brand", description="prompt metadata field whose value(s) are accepted mentions for that sample; null to ignore"
        )
        within_chars: int | None = Field(
            None, ge=1, description="the mention must start within the first N characters; null: anywhere"
        )
        present: float = Field(1.0, description="reward of a completion with a mention")
        absent: float = Field(0.0, description="reward of a completion without one")
        case_sensitive: bool = Field(False, description="match mentions with their case")

        @model_validator(mode="after")
        def check_something_to_find(self):
            if not (self.brand or self.phrases or self.meta_field):
                raise ValueError("set brand, phrases or meta_field: there is no mention to look for")
            return self

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self._static = [p.brand] if p.brand else []
        self._static += list(p.phrases)

    def accepted(self, rollout: rlgen.Rollout, i: int) -> list[str]:
        """The mentions that count for sample ``i``."""
        field = self.params.meta_field
        extra = meta_strings(rollout.meta[i].get(field)) if field and rollout.meta is not None else []
        mentions = self._static + extra
        if not mentions:
            raise rlgen.PluginError(
                f"reward '{self.name}': sample {i} has no '{field}' in its prompt metadata and no brand or phrases "
                "are configured; add the field to the data or set params.brand"
            )
        return mentions

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        p = self.params
        values, details = [], []
        for i, text in enumerate(rollout.texts):
            hits = find_phrases(phrase_pattern(self.accepted(rollout, i), p.case_sensitive), text)
            if p.within_chars is not None:
                hits = [h for h in hits if h[0] < p.within_chars]
            values.append(p.present if hits else p.absent)
            details.append({"mention": hits[0][2] if hits else None, "position": hits[0][0] if hits else None})
        found = sum(d["mention"] is not None for d in details)
        return rlgen.RewardResult(
            values=torch.tensor(values, dtype=torch.float32),
            details=details,
            metrics={"mention_rate": found / max(len(details), 1)},
        )


@rlgen.hookimpl
def rlgen_reward_providers() -> list[type[rlgen.RewardProvider]]:
    return [OffVocabulary, RequiredMention]
