"""``relate.risk``: token-level risk-control penalty, paper Eq. 5 first term.

Every completion token that overlaps a blacklisted word or phrase gets ``-lambda_1``; all other tokens get 0.
The blacklist is the shipped English and Chinese lexicons (``rlgen_relate/lexicons/risk_*.txt``) plus the
user's files and phrases merged on top. One vectorised pass over the whole batch finds the phrases (see
:mod:`.lexicon`); the core maps their character spans to tokens, so a word split over several tokens marks all
of them.
"""

from __future__ import annotations

import torch
from pydantic import Field

import rlgen

from ._text import NormalizedBatch
from .lexicon import PhraseMatcher, builtin_lexicon_path, normalize_phrase, read_lexicon


class RiskReward(rlgen.RewardProvider):
    name = "relate.risk"
    description = "Token-level penalty -lambda_1 on every token of a blacklisted (absolute, exaggerated) phrase (Eq. 5)."
    granularity = "token"

    class Params(rlgen.Params):
        penalty: float = Field(1.0, ge=0, description="lambda_1 of Eq. 5: penalty on each token of a blacklisted phrase")
        languages: list[str] = Field(
            default_factory=lambda: ["en", "zh"],
            description="shipped lexicons to load (rlgen_relate/lexicons/risk_<lang>.txt); [] to use only your own",
        )
        lexicon_files: list[str] = Field(
            default_factory=list, description="extra lexicon files (one phrase per line, '# ' starts a comment) merged on top"
        )
        phrases: list[str] = Field(default_factory=list, description="extra blacklisted phrases merged on top")
        allow: list[str] = Field(
            default_factory=list, description="phrases removed from the merged blacklist (e.g. a brand name containing 'best')"
        )

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        phrases: list[str] = []
        for lang in p.languages:
            path = builtin_lexicon_path(f"risk_{lang}.txt")
            if not path.is_file():
                have = sorted(f.stem.removeprefix("risk_") for f in path.parent.glob("risk_*.txt"))
                raise rlgen.PluginError(f"{self.name}: params.languages: no shipped lexicon for {lang!r} (have: {have})")
            phrases += read_lexicon(path, plugin=self.name, field="languages")
        for f in p.lexicon_files:
            phrases += read_lexicon(f, plugin=self.name, field="lexicon_files")
        phrases += p.phrases
        allowed = {normalize_phrase(a) for a in p.allow}
        self.blacklist = [ph for ph in dict.fromkeys(phrases) if normalize_phrase(ph) not in allowed]
        self.matcher = PhraseMatcher(self.blacklist)

    def find_spans(self, texts: list[str]) -> tuple[list[list[tuple[int, int]]], list[list[str]]]:
        """Original-text spans of blacklisted phrases and the lexicon entries they matched, per text."""
        batch = NormalizedBatch(texts)
        spans: list[list[tuple[int, int]]] = []
        phrases: list[list[str]] = []
        for k, matches in enumerate(self.matcher.find(batch.norms)):
            spans.append([batch.to_original(k, s, e) for s, e, _ in matches])
            phrases.append([p for _, _, p in matches])
        return spans, phrases

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        spans, phrases = self.find_spans(rollout.texts)
        hit = rollout.spans_to_tokens(spans)
        # Eq. 5, first term: -lambda_1 * I(T_t in V^black); spans_to_tokens never marks padding
        values = torch.where(hit, torch.tensor(-float(self.params.penalty)), torch.tensor(0.0))
        details = [
            {"phrases": ph, "matches": [text[s:e] for s, e in sp]} for text, sp, ph in zip(rollout.texts, spans, phrases)
        ]
        b = max(len(spans), 1)
        n_hit = sum(1 for sp in spans if sp)
        metrics = {
            "hit_rate": n_hit / b,
            "matches_per_sample": sum(len(sp) for sp in spans) / b,
            "penalized_token_fraction": float(hit.sum()) / max(int(rollout.completion_mask.sum()), 1),
        }
        return rlgen.RewardResult(values=values, details=details, metrics=metrics)
