"""RELATE's evaluation metrics (paper 4.1.2), added to `rlgen eval` through ``rlgen_eval_metrics``.

- Compliance rate, Eq. 11: share of ads that pass risk control (no blacklisted phrase) and every
  format rule, judged with the run's own ``relate.risk`` / ``relate.format`` params.
- Diversity, Eq. 12: the training diversity reward applied to the evaluation set in training-sized
  batches, scaled to [0, 1] per ad as 1 - (share of its words inside frequent n-grams); higher is better.
- Compliance by vertical: Eq. 11 over the ads of each ``vertical`` of the contexts, when they have one.
- Fluent rate: share of ads without a stutter or a repeated phrase, as the bundled ``repetition`` reward
  (rlgen-plugins) finds them with the run's params; what a reader notices first in "Lease Lease Lease".
- distinct-2 and self-BLEU (nltk), for comparison with the literature. Both are set measures written as
  per-ad contributions with weights, whose weighted mean is the set measure, so the core gives them bootstrap
  CIs over contexts and paired differences against a baseline (see :func:`distinct_n_contributions`). Both
  read the ad's words without the layout's field labels ("Title:", "Description:"), which the run's
  ``relate.diversity`` ignores too (its ``ignore`` patterns): every ad that keeps the layout shares them, so
  with them in, a policy that keeps the layout more often (or writes shorter fields) looks less diverse for
  that alone: on the demo's base self-BLEU is 0.111 with them and 0.084 without (docs/demo.md, round ten).
- Simulator CTCVR: the click/conversion simulator's true ``p_click * p_conv`` of each ad in its context
  (docs/simulator.md), when the contexts carry the fields it reads (query, bid word, selling points,
  landing page). Fatigue is measured over the whole evaluation set, as for one policy's traffic.
- Predicted CTCVR: the ``relate.ctcvr`` reward turned back into a probability (its ``log`` and
  ``standardised`` scales are inverted with the model's own statistics), so that it can be set beside
  the simulator's: a policy that pleases the reward model but not the simulated users shows a gap.
  Delta CTCVR (Eq. 10) is the core's relative delta of either against a baseline evaluation.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

import rlgen

from rlgen_plugins.rewards import RepetitionReward

from .rewards._text import context_text
from .rewards.contradiction import ContradictionReward
from .rewards.correctness import CorrectnessReward
from .rewards.diversity import DiversityReward
from .rewards.format import FormatReward
from .rewards.risk import RiskReward

_WORD = re.compile(r"\S+")

#: seed of the simulated world (its per-context and per-ad noise); the demo's impression logs use the same
SIMULATOR_SEED = 0


class WordTokenizer:
    """Whitespace-delimited words with character offsets: the unit Eq. 12 counts in."""

    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False):
        spans = [m.span() for m in _WORD.finditer(text)]
        out: dict[str, Any] = {"input_ids": [1] * len(spans)}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out


def _configured(config: Any, cls: type[rlgen.RewardProvider], **overrides: Any) -> rlgen.RewardProvider:
    """The reward as the run configured it (same params), or with defaults when the run does not use it."""
    params = next((ref.params for ref in getattr(config, "rewards", []) if ref.name == cls.name), {})
    return cls(cls.Params.model_validate({**params, **overrides}))


def compliance(texts: list[str], meta: list[dict[str, Any]], config: Any) -> tuple[list[float], list[float], list[float]]:
    """Per ad: (passes risk and format [Eq. 11], passes format, passes risk) as 0/1."""
    risk = _configured(config, RiskReward)
    fmt = _configured(config, FormatReward)
    spans, _ = risk.find_spans(texts)  # type: ignore[attr-defined]
    risk_ok = [0.0 if s else 1.0 for s in spans]
    format_ok = [0.0 if fmt.check(t, None, m) else 1.0 for t, m in zip(texts, meta)]  # type: ignore[attr-defined]
    both = [r * f for r, f in zip(risk_ok, format_ok)]
    return both, format_ok, risk_ok


def diversity_scores(texts: list[str], meta: list[dict[str, Any]], group: list[int], config: Any) -> list[float]:
    """Eq. 12 per ad, in [0, 1]: 1 - share of the ad's words that the training diversity reward penalises.

    The reward sees the evaluation set the way training scores it: ``data.prompts_per_step`` x ``data.oversample`` contexts per batch
    (with all their samples), in order, with its window of past batches. So an n-gram is frequent when it recurs
    across as many prompts as it must during training. Scored as one batch, the reward's threshold (a share of
    the prompts present) would grow with the set and hardly any n-gram of a 100-context set would reach it.
    """
    # fresh: only the evaluation set defines what is frequent
    reward = _configured(config, DiversityReward, log_frequent=False)
    data = getattr(config, "data", None)
    per_batch = (getattr(data, "prompts_per_step", None) or len(set(group)) or 1) * getattr(data, "oversample", 1)
    contexts = list(dict.fromkeys(group))  # in order of first appearance
    scores = [1.0] * len(texts)
    for start in range(0, len(contexts), per_batch):
        batch = set(contexts[start : start + per_batch])
        idx = [i for i, g in enumerate(group) if g in batch]
        rollout = rlgen.Rollout.from_texts(WordTokenizer(), [texts[i] for i in idx], group=[group[i] for i in idx],
                                           meta=[meta[i] for i in idx])
        penalised = (reward.score(rollout).values != 0) & rollout.completion_mask
        words = rollout.completion_mask.sum(1).clamp(min=1)
        for i, s in zip(idx, (1.0 - penalised.sum(1) / words).tolist()):
            scores[i] = s
    return scores


def fluent_scores(texts: list[str], config: Any) -> list[float]:
    """Per ad: 1 when the ``repetition`` reward finds no stutter and no repeated phrase in it, else 0."""
    finder = _configured(config, RepetitionReward)
    return [0.0 if finder.find_repeats(t) else 1.0 for t in texts]  # type: ignore[attr-defined]


def consistent_scores(texts: list[str], meta: list[dict[str, Any]], config: Any) -> list[float]:
    """Per ad: 1 when ``relate.contradiction`` finds no clause denying what the ad or the advertiser asserts, else 0."""
    finder = _configured(config, ContradictionReward)
    return [0.0 if finder.contradictions(t, m) else 1.0 for t, m in zip(texts, meta)]  # type: ignore[attr-defined]


def factual_scores(texts: list[str], meta: list[dict[str, Any]], config: Any) -> list[float]:
    """Per ad: 1 when the rule checker of ``relate.correctness`` (the run's evidence fields and claim kinds) finds
    no claim the ad's context does not support ("Free transmission repair." where the diagnostic is free), else 0."""
    checker = _configured(config, CorrectnessReward, backend="rules")
    fields = checker.params.context_fields  # type: ignore[attr-defined]
    return [0.0 if checker.unsupported_claims(t, context_text(m, fields))[0] else 1.0  # type: ignore[attr-defined]
            for t, m in zip(texts, meta)]


def without_labels(texts: list[str], config: Any) -> list[str]:
    """The ads with the layout's field labels removed: the text the run's ``relate.diversity`` ignores (its
    ``ignore`` regexes, case-insensitive, per line), so that set measures of diversity compare what the ads say."""
    patterns = _configured(config, DiversityReward, log_frequent=False).params.ignore  # type: ignore[attr-defined]
    if not patterns:
        return list(texts)
    label = re.compile("|".join(f"(?:{p})" for p in patterns), re.M | re.I)
    return [label.sub(" ", t) for t in texts]


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    w = text.lower().split()
    return [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]


def distinct_n_contributions(texts: list[str], n: int = 2) -> tuple[list[float], list[float]]:
    """distinct-n as per-ad ``(values, weights)`` whose weighted mean is :func:`distinct_n` of the set.

    Each n-gram occurrence carries 1 / (its occurrences in the set), so the set's unique n-grams are the sum of
    the credits; an ad's value is its mean credit (1: none of its n-grams is used elsewhere or twice), its weight
    its number of n-grams. Resampling contexts then resamples whole ads with the credits of the full set, so a
    context drawn twice does not count as a copy of itself (a plain bootstrap of distinct-n would).
    """
    grams = [_ngrams(t, n) for t in texts]
    counts: dict[tuple[str, ...], int] = {}
    for gs in grams:
        for g in gs:
            counts[g] = counts.get(g, 0) + 1
    values = [sum(1.0 / counts[g] for g in gs) / len(gs) if gs else 0.0 for gs in grams]
    return values, [float(len(gs)) for gs in grams]


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique n-grams over all n-grams of the set (Li et al. 2016)."""
    grams = [g for t in texts for g in _ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu_scores(texts: list[str], max_refs: int = 200) -> tuple[list[float], list[float]]:
    """Per ad: ``(BLEU-4 against the other ads, weight)``; an empty ad (or a set of one) weighs 0.

    The weighted mean is :func:`self_bleu` of the set; the references stay the whole set when contexts are
    resampled, so the CI says how much the set's self-BLEU depends on which contexts were drawn.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    tokens = [t.lower().split() for t in texts]
    smooth = SmoothingFunction().method1
    gen = torch.Generator().manual_seed(0)
    values, weights = [0.0] * len(texts), [0.0] * len(texts)
    for i, hyp in enumerate(tokens):
        if not hyp:
            continue
        others = [j for j in range(len(tokens)) if j != i and tokens[j]]
        if len(others) > max_refs:  # bounded cost on large sets: a seeded sample of references
            others = [others[k] for k in torch.randperm(len(others), generator=gen)[:max_refs].tolist()]
        if others:
            values[i] = sentence_bleu([tokens[j] for j in others], hyp, smoothing_function=smooth)
            weights[i] = 1.0
    return values, weights


def self_bleu(texts: list[str], max_refs: int = 200) -> float:
    """Mean BLEU-4 of each ad against the others (Zhu et al. 2018); lower means more diverse."""
    values, weights = self_bleu_scores(texts, max_refs)
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights)) / total if total else 0.0


#: key prefix of the per-vertical compliance rates (Eq. 11 within one vertical)
COMPLIANCE_BY_VERTICAL = "relate/compliance_by_vertical/"


def compliance_by_vertical(both: list[float], meta: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Eq. 11 per ``vertical`` of the contexts, as weighted metrics (weight 1 on the vertical's ads, 0 elsewhere),
    so each comes with a CI over contexts and a paired difference against a baseline; empty without verticals."""
    verticals = [m.get("vertical") if isinstance(m, dict) else None for m in meta]
    if not verticals or any(not v for v in verticals):
        return {}
    return {f"{COMPLIANCE_BY_VERTICAL}{v}": {"values": list(both), "weights": [1.0 if x == v else 0.0 for x in verticals]}
            for v in sorted(set(verticals))}


def simulator_metrics(texts: list[str], meta: list[dict[str, Any]], seed: int = SIMULATOR_SEED) -> dict[str, list[float]]:
    """Per ad: the simulator's true CTCVR (p_click * p_conv), CTR and whether review lets it be shown.

    The whole set is assessed in one call, so near-duplicate ads across contexts pay their fatigue.
    """
    from .lab.simulator import Simulator

    assessment = Simulator(seed=seed).assess(meta, texts)
    return {
        "relate/sim_ctcvr": assessment.p_ctcvr.tolist(),
        "relate/sim_ctr": assessment.p_click.tolist(),
        "relate/sim_shown_rate": assessment.shown.astype(float).tolist(),
    }


def has_ad_contexts(meta: list[dict[str, Any]]) -> bool:
    """Contexts without a query are not search ads: the simulator has nothing to match them against."""
    return bool(meta) and all(isinstance(m, dict) and m.get("query") for m in meta)


def ctcvr_reward_ref(config: Any) -> Any:
    """The run's ``relate.ctcvr`` reward entry (its key in metrics and its params), or None."""
    for ref in getattr(config, "rewards", []):
        if ref.name == "relate.ctcvr":
            return ref
    return None


def predicted_ctcvr(values: list[float], params: dict[str, Any]) -> list[float]:
    """The ``relate.ctcvr`` reward values as probabilities, whatever ``params.scale`` the run used."""
    scale = params.get("scale", "raw")
    if scale == "raw":
        return [float(v) for v in values]
    if scale == "log":
        return [math.exp(v) for v in values]
    # standardised: z = (log p - mean) / std with the model's training statistics (ctcvr/reward.py)
    stats = json.loads((Path(params["model"]).expanduser() / "config.json").read_text(encoding="utf-8"))["score_stats"]
    key = "log_pctr" if params.get("target", "ctcvr") == "ctr" else "log_pctcvr"
    mean, std = stats[f"{key}_mean"], stats[f"{key}_std"]
    return [math.exp(v * std + mean) for v in values]


def uses_relate(config: Any) -> bool:
    return any(ref.name.startswith("relate.") for ref in getattr(config, "rewards", []))


@rlgen.hookimpl
def rlgen_eval_metrics(texts, meta, group, config):
    if not uses_relate(config) or not texts:
        return None
    both, format_ok, risk_ok = compliance(texts, meta, config)
    words = without_labels(texts, config)
    distinct, distinct_w = distinct_n_contributions(words, 2)
    bleu, bleu_w = self_bleu_scores(words)
    return {
        "relate/compliance_rate": both,
        "relate/format_pass_rate": format_ok,
        "relate/risk_pass_rate": risk_ok,
        "relate/fluent_rate": fluent_scores(texts, config),
        "relate/consistent_rate": consistent_scores(texts, meta, config),
        "relate/factual_rate": factual_scores(texts, meta, config),
        "relate/diversity": diversity_scores(texts, meta, group, config),
        "relate/distinct_2": {"values": distinct, "weights": distinct_w},
        "relate/self_bleu": {"values": bleu, "weights": bleu_w},
        **compliance_by_vertical(both, meta),
    }


# A second implementation of the same hook (pluggy's ``specname``): the CTCVR measures need the rewards'
# values and ad contexts, which the quality metrics above do not.
@rlgen.hookimpl(specname="rlgen_eval_metrics")
def ctcvr_eval_metrics(texts, meta, group, rewards, config):
    """Simulator CTCVR (true p_click * p_conv, with CTR and shown rate) and predicted CTCVR, per ad."""
    if not uses_relate(config) or not texts:
        return None
    out: dict[str, Any] = {}
    if has_ad_contexts(meta):
        out.update(simulator_metrics(texts, meta))
    ref = ctcvr_reward_ref(config)
    if ref is not None and rewards and ref.key in rewards:
        out["relate/pred_ctcvr"] = predicted_ctcvr(rewards[ref.key], ref.params)
    return out or None
