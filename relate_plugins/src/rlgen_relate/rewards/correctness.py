"""``relate.correctness``: sentence-level penalty on claims the ad context does not support (paper 3.3.1).

Two backends behind one interface; both give 0 for a fully supported ad and down to -1 for an unsupported one.

``rules`` (default, offline, fast): the checkable claims of the ad are extracted with patterns and each must be
supported by the context (selling points, landing page, query, bid word; configurable):

- ``percent`` ("20%", "20 percent", "百分之20"): the same percentage appears in the context;
- ``price`` ("$19.99", "199元"): the same amount appears in the context, with or without a currency;
- ``duration`` ("30-day", "2 years", "7天"): the same length of time (units converted, a year = 12 months);
- ``number`` (any other number): the same value appears anywhere in the context;
- ``guarantee`` (guarantee, warranty, refund, 保修, 退款, ... from ``lexicons/guarantees.txt``): the context
  promises some guarantee too;
- ``entity`` (English only): brand-like words (iPhone, PlayStation), model codes (X200) and capitalised words
  inside a sentence of a text that is not in title case; supported when the context contains the same string;
- ``offer`` (English only): "free" or "complimentary" and the noun phrase after it ("Free transmission repair",
  up to three words, up to a preposition or the clause's end); supported when one clause of the context offers
  something free too and names every content word of that phrase ("Free transmission diagnostic" supports "Free
  diagnostics", not "Free transmission repair"). A bare "Free." needs some free offer in the context. An
  advertiser's facts rarely say what is free in other words, and a free offer the advertiser does not make is
  the misleading claim review rejects first.

Each unsupported claim costs ``penalty_per_claim``, capped at ``max_penalty``; the details list them by kind.

``http`` / ``hf`` (LLM as judge, see :mod:`._judge`): a judge model reads the documented rubric with the context
and the ad and answers ``SCORE: 0-10``; the value is ``score / 10 - 1``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Literal, NamedTuple

import torch
from pydantic import Field, model_validator

import rlgen

from ._judge import RUBRIC, HFJudge, HttpJudge, render_prompt
from ._text import NormalizedBatch, Word, clauses, context_text
from .lexicon import PhraseMatcher, builtin_lexicon_path, read_lexicon

CLAIM_KINDS = ("percent", "price", "duration", "number", "guarantee", "entity", "offer")
ClaimKind = Literal["percent", "price", "duration", "number", "guarantee", "entity", "offer"]

_NUM = r"\d+(?:[.,]\d{3})*(?:\.\d+)?"
_PERCENT = re.compile(rf"({_NUM})\s*(?:%|％|percent\b|per\s*cent\b|pct\b)|百分之\s*({_NUM})", re.I)
_CURRENCY_BEFORE = r"(?:[$€£¥￥]|us\$|usd|eur|gbp|rmb|cny)"
_CURRENCY_AFTER = r"(?:元|块|美元|欧元|英镑|dollars?\b|euros?\b|pounds?\b|usd\b|rmb\b|yuan\b|eur\b|gbp\b)"
_PRICE = re.compile(rf"{_CURRENCY_BEFORE}\s*({_NUM})|({_NUM})\s*{_CURRENCY_AFTER}", re.I)
_DURATION_UNITS = {
    "second": 1, "sec": 1, "s": 1, "秒": 1,
    "minute": 60, "min": 60, "分钟": 60,
    "hour": 3600, "hr": 3600, "h": 3600, "小时": 3600,
    "day": 86400, "天": 86400, "日": 86400,
    "week": 604800, "wk": 604800, "周": 604800, "星期": 604800,
    "month": 2592000, "个月": 2592000, "月": 2592000,
    "year": 31536000, "yr": 31536000, "年": 31536000,
}
_DURATION = re.compile(
    rf"({_NUM})\s*-?\s*(seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|wks?|months?|years?|yrs?|h|s)\b"
    rf"|({_NUM})\s*(秒|分钟|小时|天|日|周|星期|个月|月|年)",
    re.I,
)
_NUMBER = re.compile(_NUM)
_BRANDLIKE = re.compile(r"\b[a-z]+[A-Z][A-Za-z]*\b|\b[A-Z][a-z]+[A-Z][A-Za-z]*\b")
# letters then digits (X200, RTX4090, iPhone15); digits then letters ("500ml", "4K") stay numbers: "500ml" is
# supported by "500 ml" in the context
_MODEL_CODE = re.compile(r"(?<![\w.])[A-Za-z]+\d[A-Za-z0-9]*\b")
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*\b")
_SEGMENT = re.compile(r"[^.!?;\n。！？；]+")  # a sentence, a field line, or a clause after ";" (a list of facts)
_CAPITALISED_OR_WORD = re.compile(r"\b[A-Za-z]+\b")
# text before a word that puts it at the start of a sentence: nothing but spaces, or a "Label:" prefix
_SENTENCE_START = re.compile(r"^\s*(?:[\w ]{1,20}[:：]\s*)?$")
_NOT_ENTITIES = {"i", "ok"}
# words title case may leave in lower case ("Deals with Free Shipping")
_FUNCTION_WORDS = {"a", "an", "the", "and", "or", "but", "for", "nor", "with", "from", "into", "onto", "over", "of",
                   "on", "in", "at", "to", "by", "as", "per", "via", "your", "our", "you"}
OFFER_WORDS = {"free", "complimentary"}
# words that end the noun phrase an offer word opens ("Free towing within 15 miles" offers towing)
_PHRASE_ENDS = _FUNCTION_WORDS | {"within", "up", "every", "each", "when", "if", "while", "until", "after", "before",
                                  "is", "are", "available", "included", "now", "today", "online", "always"}
OFFER_PHRASE_WORDS = 3


def _value(text: str) -> float:
    """The number a numeral matched by ``_NUM`` names: commas group thousands ("1,800"), and so do dots when
    there are several ("202.894.912", European grouping); a single dot is the decimal point."""
    if text.count(".") > 1:
        text = text.replace(".", "")
    return float(text.replace(",", ""))


def _duration_seconds(amount: str, unit: str) -> float:
    u = unit.lower()
    if u not in _DURATION_UNITS:
        u = u.rstrip("s") if u.rstrip("s") in _DURATION_UNITS else u
    return _value(amount) * _DURATION_UNITS[u]


class Claims:
    """The checkable claims of one text: list of (kind, span, normalised value)."""

    def __init__(self, text: str, guarantee_matcher: PhraseMatcher, kinds: set[str]) -> None:
        self.items: list[tuple[str, tuple[int, int], Any]] = []
        taken: list[tuple[int, int]] = []

        def add(kind: str, span: tuple[int, int], value: Any) -> None:
            if any(span[0] < e and s < span[1] for s, e in taken):
                return  # already part of a more specific claim ("$20" is a price, not also a number)
            taken.append(span)
            if kind in kinds:
                self.items.append((kind, span, value))

        for m in _PERCENT.finditer(text):
            add("percent", m.span(), _value(m.group(1) or m.group(2)))
        for m in _PRICE.finditer(text):
            add("price", m.span(), _value(m.group(1) or m.group(2)))
        for m in _DURATION.finditer(text):
            amount, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            add("duration", m.span(), _duration_seconds(amount, unit))
        if "entity" in kinds:
            for m in _MODEL_CODE.finditer(text):
                add("entity", m.span(), m.group().casefold())
        for m in _NUMBER.finditer(text):
            add("number", m.span(), _value(m.group()))
        norm = NormalizedBatch([text])
        for s, e, phrase in guarantee_matcher.find(norm.norms)[0]:
            add("guarantee", norm.to_original(0, s, e), phrase)
        if "entity" in kinds:
            for m in _BRANDLIKE.finditer(text):
                add("entity", m.span(), m.group().casefold())
            for seg in _SEGMENT.finditer(text):
                self._capitalised_entities(text, seg.start(), seg.end(), add)
        if "offer" in kinds:
            for clause in clauses(text):
                for span, phrase in self._offers(text, clause):
                    self.items.append(("offer", span, phrase))  # may overlap a number ("Free 30-day trial")

    @staticmethod
    def _offers(text: str, clause: list[Word]) -> list[tuple[tuple[int, int], frozenset[str]]]:
        """Each free offer of one clause: its span (offer word and phrase) and the phrase's content lemmas."""
        out = []
        for i, (word, start, end) in enumerate(clause):
            if word not in OFFER_WORDS or text[start - 1 : start] == "-":  # "interest-free" is not an offer
                continue
            phrase, last, words = [], end, 0
            for w, _, e in clause[i + 1 :]:
                if w in _PHRASE_ENDS or w in OFFER_WORDS or words == OFFER_PHRASE_WORDS:
                    break
                last = e
                if not any(ch.isdigit() for ch in w):  # a number is its own claim ("Free 30-day trial")
                    words += 1
                    if len(w) >= 3:
                        phrase.append(w)
            out.append(((start, last), frozenset(phrase)))
        return out

    @staticmethod
    def _capitalised_entities(text: str, start: int, end: int, add: Any) -> None:
        """Capitalised words inside one sentence, unless the sentence is written in title case."""
        inner = [m for m in _CAPITALISED_OR_WORD.finditer(text, start, end) if m.start() > start]
        inner = [m for m in inner if not _SENTENCE_START.search(text[start : m.start()])]
        content = [m.group() for m in inner if len(m.group()) >= 3 and m.group().casefold() not in _FUNCTION_WORDS]
        if content and sum(w[0].islower() for w in content) / len(content) <= 0.2:
            return  # "Great Deals On Shoes": (nearly) every word capitalised is style, not names
        for m in _CAPITALISED.finditer(text, start, end):
            s, e = m.span()
            if _SENTENCE_START.search(text[start:s]):
                # the first word is capitalised because it starts the sentence; "Visit New York" names "New York"
                rest = re.search(r"\s+", text[s:e])
                if rest is None:
                    continue
                s += rest.end()
            if text[s:e].casefold() not in _NOT_ENTITIES:
                add("entity", (s, e), text[s:e].casefold())

    @staticmethod
    def free_clauses(text: str) -> list[set[str]]:
        """The lemmas of each clause of ``text`` that offers something free: what a free offer may cite."""
        return [{w for w, _, _ in c} for c in clauses(text) if any(w in OFFER_WORDS for w, _, _ in c)]

    def values(self, kind: str) -> set[Any]:
        return {v for k, _, v in self.items if k == kind}

    def numbers(self) -> set[float]:
        """Every numeric value, whatever its kind (a price may be given without currency in the context)."""
        return {v for k, _, v in self.items if k in ("percent", "price", "number")}


def _cited(word: str, words: set[str]) -> bool:
    """``word`` is one of ``words``, or shares its first five letters with one that begins or ends it: "consult"
    cites "consultation", "diagnostics" cites "diagnostic"."""
    if word in words:
        return True
    return len(word) >= 5 and any(len(w) >= 5 and (w.startswith(word) or word.startswith(w)) for w in words)


class Evidence(NamedTuple):
    """What an ad's context supports, as :meth:`ClaimChecker.unsupported` compares an ad's claims with it."""

    percents: set[Any]
    numbers: set[float]  # every numeric value, whatever its kind
    durations: set[Any]
    has_guarantee: bool
    folded: str  # the context, casefolded: an entity is supported when it occurs in it
    free_offers: list[set[str]]  # the lemmas of each clause offering something free


class ClaimChecker:
    """The rules backend: which claims of an ad its context does not support.

    Shared by ``relate.correctness`` (sentence level: a penalty per ad) and ``relate.claims`` (token level: the
    penalty on the characters of each unsupported claim).
    """

    def __init__(self, kinds: Iterable[str], guarantee_files: Iterable[str] = (), plugin: str = "relate.correctness") -> None:
        terms = read_lexicon(builtin_lexicon_path("guarantees.txt"), plugin=plugin, field="guarantee_files")
        for f in guarantee_files:
            terms += read_lexicon(f, plugin=plugin, field="guarantee_files")
        self.guarantees = PhraseMatcher(terms)
        self.kinds = set(kinds)
        # the G ads of a group share their context: parse each distinct one once (per instance, bounded)
        self._evidence = functools.lru_cache(maxsize=256)(self._parse_evidence)

    def _parse_evidence(self, context: str) -> Evidence:
        """What ``context`` supports."""
        claims = Claims(context, self.guarantees, set(CLAIM_KINDS) - {"offer"})
        return Evidence(
            percents=claims.values("percent"), numbers=claims.numbers(), durations=claims.values("duration"),
            has_guarantee=bool(claims.values("guarantee")), folded=context.casefold(),
            free_offers=Claims.free_clauses(context) if "offer" in self.kinds else [],
        )

    def unsupported(self, ad: str, context: str) -> tuple[list[tuple[str, tuple[int, int], str]], int]:
        """``(kind, (start, end), text)`` of each claim of ``ad`` that ``context`` does not support, and the number
        of claims checked."""
        claims = Claims(ad, self.guarantees, self.kinds)
        if not claims.items:
            return [], 0
        evidence = self._evidence(context)
        bad = []
        for kind, (s, e), value in claims.items:
            if kind == "percent":
                ok = value in evidence.percents
            elif kind in ("price", "number"):
                ok = value in evidence.numbers
            elif kind == "duration":
                ok = value in evidence.durations
            elif kind == "guarantee":
                ok = evidence.has_guarantee
            elif kind == "offer":
                ok = any(all(_cited(w, words) for w in value) for words in evidence.free_offers)
            else:  # entity
                ok = value in evidence.folded
            if not ok:
                bad.append((kind, (s, e), ad[s:e]))
        return bad, len(claims.items)


def claim_metrics(details: list[dict[str, Any]]) -> dict[str, float]:
    """What both claim rewards log from their per-ad details (``unsupported`` list, ``claims`` count): the share of
    ads with an unsupported claim, and the claims checked per ad."""
    b = max(len(details), 1)
    return {
        "unsupported_rate": sum(1 for d in details if d["unsupported"]) / b,
        "claims_per_sample": sum(d["claims"] for d in details) / b,
    }


class ClaimParams(rlgen.Params):
    """What the rule checker reads: the evidence fields, the claim kinds and extra guarantee terms."""

    context_fields: list[str] = Field(
        default_factory=lambda: ["selling_points", "landing_page", "query", "bid_word"],
        description="rollout.meta fields that count as evidence for the ad's claims",
    )
    checks: list[ClaimKind] = Field(
        default_factory=lambda: list(CLAIM_KINDS), description="rules backend: claim kinds to check"
    )
    guarantee_files: list[str] = Field(
        default_factory=list, description="rules backend: extra guarantee-term files merged with lexicons/guarantees.txt"
    )


class CorrectnessReward(rlgen.RewardProvider):
    name = "relate.correctness"
    description = "Penalises ad claims (numbers, prices, durations, guarantees, names, free offers) the context does not support; rules or LLM judge."
    granularity = "sentence"

    class Params(ClaimParams):
        backend: Literal["rules", "http", "hf"] = Field(
            "rules", description="rules: offline claim checker; http: OpenAI-compatible judge endpoint; hf: local causal LM judge"
        )
        penalty_per_claim: float = Field(0.5, ge=0, description="rules backend: penalty per unsupported claim")
        max_penalty: float = Field(1.0, ge=0, description="rules backend: cap of the penalty")
        judge_url: str | None = Field(None, description="http backend: base URL of the API, e.g. http://127.0.0.1:8000/v1")
        judge_model: str | None = Field(
            None, description="http: model name sent to the API; hf: builtin:NAME, folder or hub id of the judge LM"
        )
        judge_api_key_env: str | None = Field(None, description="http backend: environment variable holding the API key")
        judge_rubric: str = Field(RUBRIC, description="judge prompt; {context} and {ad} are filled in")
        judge_timeout_s: float = Field(30.0, gt=0, description="http backend: timeout of one request")
        judge_max_retries: int = Field(2, ge=0, description="http backend: retries after an error, timeout or garbage answer")
        judge_backoff_s: float = Field(1.0, ge=0, description="http backend: first retry delay, doubled each retry")
        judge_concurrency: int = Field(8, ge=1, description="http backend: requests in flight")
        judge_max_tokens: int = Field(16, ge=1, description="tokens the judge may answer with")
        judge_temperature: float = Field(0.0, ge=0, description="http backend: sampling temperature of the judge")
        judge_mode: Literal["generate", "expected"] = Field(
            "generate", description="hf backend: parse a generated answer, or take the expected score over digit tokens"
        )
        judge_batch_size: int = Field(8, ge=1, description="hf backend: prompts per forward pass")
        judge_dtype: str = Field("float32", description="hf backend: dtype of the judge model")
        trust_remote_code: bool = Field(False, description="hf backend: allow custom model code (only for models you trust)")

        @model_validator(mode="after")
        def _backend_fields(self) -> "CorrectnessReward.Params":
            if self.backend == "http" and not (self.judge_url and self.judge_model):
                raise ValueError("backend 'http' needs judge_url and judge_model")
            if self.backend == "hf" and not self.judge_model:
                raise ValueError("backend 'hf' needs judge_model")
            return self

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.checker = ClaimChecker(p.checks, p.guarantee_files, plugin=self.name)
        self.judge: Any = None
        if p.backend == "http":
            self.judge = HttpJudge(
                plugin=self.name,
                base_url=p.judge_url or "",
                model=p.judge_model or "",
                api_key_env=p.judge_api_key_env,
                timeout_s=p.judge_timeout_s,
                max_retries=p.judge_max_retries,
                backoff_s=p.judge_backoff_s,
                concurrency=p.judge_concurrency,
                max_tokens=p.judge_max_tokens,
                temperature=p.judge_temperature,
            )

    def setup(self, context: rlgen.RunContext) -> None:
        if self.params.backend == "hf":
            self.load_judge(context.resolve_model(self.params.judge_model or ""))

    def load_judge(self, path: str) -> None:
        """Load the local judge LM from a resolved folder or hub id (``setup`` resolves ``builtin:`` first)."""
        from rlgen_plugins.models import load_causal_lm, load_tokenizer

        p = self.params
        tokenizer = load_tokenizer(path, trust_remote_code=p.trust_remote_code, padding_side="left")
        model = load_causal_lm(path, dtype=p.judge_dtype, trust_remote_code=p.trust_remote_code)
        self.judge = HFJudge(
            plugin=self.name,
            model=model,
            tokenizer=tokenizer,
            mode=p.judge_mode,
            max_new_tokens=p.judge_max_tokens,
            batch_size=p.judge_batch_size,
        )

    # -- rules backend ----------------------------------------------------------------------------------------------

    def unsupported_claims(self, ad: str, context: str) -> tuple[list[dict[str, str]], int]:
        """Claims of ``ad`` that ``context`` does not support (kind and text), and the number of claims checked."""
        bad, n = self.checker.unsupported(ad, context)
        return [{"kind": kind, "text": text} for kind, _, text in bad], n

    def _score_rules(self, rollout: rlgen.Rollout, contexts: list[str]) -> rlgen.RewardResult:
        p = self.params
        values, details = [], []
        for ad, context in zip(rollout.texts, contexts):
            bad, n = self.unsupported_claims(ad, context)
            values.append(-min(p.max_penalty, p.penalty_per_claim * len(bad)) if bad else 0.0)
            details.append({"unsupported": bad, "claims": n})
        return rlgen.RewardResult(values=torch.tensor(values, dtype=torch.float32), details=details,
                                  metrics=claim_metrics(details))

    # -- judge backends ---------------------------------------------------------------------------------------------

    def _score_judge(self, rollout: rlgen.Rollout, contexts: list[str]) -> rlgen.RewardResult:
        if self.judge is None:
            raise rlgen.PluginError(f"{self.name}: setup() was not called (the judge model is not loaded)")
        prompts = [render_prompt(self.params.judge_rubric, c, ad) for ad, c in zip(rollout.texts, contexts)]
        unique = list(dict.fromkeys(prompts))  # the G samples of a prompt often repeat an ad
        scores = dict(zip(unique, self.judge.score(unique)))
        judged = [scores[q] for q in prompts]
        values = torch.tensor([s / 10.0 - 1.0 for s in judged], dtype=torch.float32)
        details = [{"judge_score": s} for s in judged]
        return rlgen.RewardResult(values=values, details=details, metrics={"mean_judge_score": sum(judged) / max(len(judged), 1)})

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        metas = rollout.meta if rollout.meta is not None else [{}] * rollout.batch_size
        contexts = [context_text(m, self.params.context_fields) for m in metas]
        if self.params.backend == "rules":
            return self._score_rules(rollout, contexts)
        return self._score_judge(rollout, contexts)
