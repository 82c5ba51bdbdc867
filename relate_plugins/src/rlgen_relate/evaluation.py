"""RELATE's evaluation metrics (paper 4.1.2), added to `rlgen eval` through ``rlgen_eval_metrics``.

- Compliance rate, Eq. 11: share of ads that pass risk control (no blacklisted phrase) and every
  format rule, judged with the run's own ``relate.risk`` / ``relate.format`` params.
- Diversity, Eq. 12: the training diversity reward applied to the evaluation set in training-sized
  batches, scaled to [0, 1] per ad as 1 - (share of its words inside frequent n-grams); higher is better.
- distinct-2 and self-BLEU (nltk), for comparison with the literature.
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

    The reward sees the evaluation set the way training feeds it: ``data.prompts_per_step`` contexts per batch
    (with all their samples), in order, with its window of past batches. So an n-gram is frequent when it recurs
    across as many prompts as it must during training. Scored as one batch, the reward's threshold (a share of
    the prompts present) would grow with the set and hardly any n-gram of a 100-context set would reach it.
    """
    # fresh: only the evaluation set defines what is frequent
    reward = _configured(config, DiversityReward, log_frequent=False)
    data = getattr(config, "data", None)
    per_batch = getattr(data, "prompts_per_step", None) or len(set(group)) or 1
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


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique n-grams over all n-grams of the set (Li et al. 2016)."""
    grams = [tuple(w[i : i + n]) for w in (t.lower().split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: list[str], max_refs: int = 200) -> float:
    """Mean BLEU-4 of each ad against the others (Zhu et al. 2018); lower means more diverse."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    tokens = [t.lower().split() for t in texts]
    smooth = SmoothingFunction().method1
    gen = torch.Generator().manual_seed(0)
    scores = []
    for i, hyp in enumerate(tokens):
        if not hyp:
            continue
        others = [j for j in range(len(tokens)) if j != i and tokens[j]]
        if len(others) > max_refs:  # bounded cost on large sets: a seeded sample of references
            others = [others[k] for k in torch.randperm(len(others), generator=gen)[:max_refs].tolist()]
        if others:
            scores.append(sentence_bleu([tokens[j] for j in others], hyp, smoothing_function=smooth))
    return sum(scores) / len(scores) if scores else 0.0


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
    return {
        "relate/compliance_rate": both,
        "relate/format_pass_rate": format_ok,
        "relate/risk_pass_rate": risk_ok,
        "relate/diversity": diversity_scores(texts, meta, group, config),
        "relate/distinct_2": distinct_n(texts, 2),
        "relate/self_bleu": self_bleu(texts),
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
