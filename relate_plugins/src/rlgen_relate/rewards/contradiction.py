"""``relate.contradiction``: token-level penalty on a clause that denies what the ad or the advertiser asserts.

Read as an advertiser reads them, trained ads that pass every rule still contradict themselves: "Free repair. ...
No repair included.", "Unlimited classes, ... no classes available.", "Security Camera No Security", or deny the
advertiser's own selling point ("No parking." for a clinic whose facts say "Free parking at every location"). A
reader stops trusting such an ad, and review would send it back; no other reward sees it, because every word of it
is relevant, correct on its own, and within the limits.

A negation ("no", "not", "without", "never", "doesn't", ...) opens a scope of the next ``window`` words, up to the
end of its clause (a comma, a full stop, a line break, "and", "but"). The scope's content words are what it denies:
its words less function words and predicates that say nothing themselves ("included", "available", "required",
"longer": "no longer offers" denies "offers"' object). The clause contradicts when every content word it denies is
asserted elsewhere: in the ad outside any negation, in the bid word, or in a selling point that itself negates
nothing. "No minimum balance" for an advertiser whose fact is "No minimum balance" denies nothing asserted; "No
parking fees" next to "Free parking" denies "fees", which nothing asserts; "Pay no interest" next to "interest-free"
denies nothing asserted either. Words match case-folded, with a plural "s"/"es"/"ies" removed.

The penalty goes on the tokens of the negation and its scope, so token-level credit (Eq. 7) pushes down the
clause that contradicts, not the claims it contradicts. English only: other scripts pass unpenalised.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

import rlgen

from ._text import Word, clauses, context_text, lemma

NEGATIONS = ["no", "not", "without", "never", "none", "nothing", "nor", "cannot", "can't", "don't", "doesn't",
             "isn't", "aren't", "won't", "wasn't"]
# words a negation's scope holds that deny nothing themselves: articles, prepositions, pronouns, and predicates
# that only say whether the denied thing is there ("no repair included", "no classes available")
NEUTRAL = ["a", "an", "the", "of", "for", "to", "in", "on", "at", "by", "per", "with", "from", "or", "your", "you",
           "our", "we", "us", "it", "its", "this", "that", "is", "are", "be", "any", "more", "longer", "extra",
           "just", "only", "all", "included", "include", "includes", "available", "required", "requires", "require",
           "needed", "need", "necessary", "offered", "offer", "offers", "provided", "allowed", "have", "has", "get"]

class ContradictionReward(rlgen.RewardProvider):
    name = "relate.contradiction"
    description = ("Token-level penalty on a negated clause ('No repair included') whose every content word the ad, "
                   "its bid word or the advertiser's selling points assert.")
    granularity = "token"

    class Params(rlgen.Params):
        penalty: float = Field(1.0, ge=0, description="penalty on each token of a contradicting negation and its scope")
        window: int = Field(4, ge=1, description="words after a negation that it denies (up to the end of its clause)")
        negations: list[str] = Field(default_factory=lambda: list(NEGATIONS), description="words that open a negation")
        neutral: list[str] = Field(
            default_factory=lambda: list(NEUTRAL),
            description="words inside a negation's scope that deny nothing themselves (function words, 'included', 'available')",
        )
        context_fields: list[str] = Field(
            default_factory=lambda: ["bid_word", "selling_points"],
            description="rollout.meta fields whose clauses without a negation count as asserted by the advertiser",
        )

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        self._negations = {lemma(w) for w in self.params.negations}
        self._neutral = {lemma(w) for w in self.params.neutral}

    def _scopes(self, clause: list[Word]) -> list[tuple[int, int]]:
        """Word index ranges ``[first, last)`` of each negation and the words it denies."""
        out = []
        for i, (word, _, _) in enumerate(clause):
            if word in self._negations:
                out.append((i, min(i + 1 + self.params.window, len(clause))))
        return out

    def asserted(self, meta: dict[str, Any] | None) -> set[str]:
        """The words of the advertiser's clauses (``context_fields``) that negate nothing."""
        words: set[str] = set()
        for clause in clauses(context_text(meta, self.params.context_fields)):
            if not self._scopes(clause):
                words.update(w for w, _, _ in clause)
        return words

    def contradictions(self, text: str, meta: dict[str, Any] | None = None) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of the negations in ``text`` that deny only asserted words."""
        parts = clauses(text)
        scoped = [self._scopes(c) for c in parts]
        asserted = self.asserted(meta)
        for clause, scopes in zip(parts, scoped):
            inside = {j for first, last in scopes for j in range(first, last)}
            asserted.update(w for j, (w, _, _) in enumerate(clause) if j not in inside)
        spans = []
        for clause, scopes in zip(parts, scoped):
            for first, last in scopes:
                denied = [w for w, _, _ in clause[first + 1 : last]
                          if w not in self._negations and w not in self._neutral and not any(ch.isdigit() for ch in w)]
                if denied and all(w in asserted for w in denied):
                    spans.append((clause[first][1], clause[last - 1][2]))
        return spans

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        metas = rollout.meta or [None] * rollout.batch_size
        found = [self.contradictions(text, meta) for text, meta in zip(rollout.texts, metas)]
        hit = rollout.spans_to_tokens(found)
        values = torch.where(hit, torch.tensor(-float(self.params.penalty)), torch.tensor(0.0))  # Eq. 5 style
        details = [{"contradicts": [text[s:e] for s, e in spans]} for text, spans in zip(rollout.texts, found)]
        metrics = {"contradiction_rate": sum(1 for f in found if f) / max(len(found), 1)}
        return rlgen.RewardResult(values=values, details=details, metrics=metrics)
