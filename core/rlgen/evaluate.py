"""Evaluation: generate on held-out contexts, score, and compare with a baseline.

Per-completion metrics come from the configured rewards and from ``rlgen_eval_metrics`` hook
implementations; the core only aggregates them: means with bootstrap confidence intervals over
contexts, and, against a baseline evaluation of the same contexts, the relative delta (paper Eq. 10
for CTCVR, the same formula for every metric) and the absolute difference, each with a paired CI.

A hook may give a metric per-completion *weights* (``{"values": [...], "weights": [...]}``): the
metric is then the weighted mean sum(w v) / sum(w), resampled as a ratio over contexts. That makes
set measures bootstrappable when each completion's contribution is known (distinct-n: a completion's
share of unique n-grams weighted by its n-gram count), and subsets too (weight 0 outside a subset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import tqdm

from . import session
from .config import RunConfig
from .data import PromptSource
from .discovery import Registry
from .errors import ConfigError
from .interfaces import RewardProvider, Sampler
from .reward import check_reward_result
from .seeding import seed_everything, step_seed

BOOTSTRAP_SAMPLES = 1000


@dataclass
class EvalResult:
    """Per-completion values and set-level numbers of one evaluation."""

    per_sample: dict[str, list[float]]
    scalars: dict[str, float]
    texts: list[str]
    meta: list[dict[str, Any]]
    group: list[int]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    #: per-completion weights of weighted metrics (a key of ``per_sample``); absent keys weigh every completion 1
    weights: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "scalars": self.scalars, "per_sample": self.per_sample, "group": self.group,
                "weights": self.weights, "samples": [{"text": t, "context": m} for t, m in zip(self.texts, self.meta)]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvalResult":
        samples = data["samples"]
        return cls(data["per_sample"], data["scalars"], [s["text"] for s in samples], [s["context"] for s in samples],
                   data["group"], data.get("summary", {}), data.get("weights", {}))


def run_evaluation(
    sampler: Sampler,
    rewards: dict[str, RewardProvider],
    source: PromptSource,
    registry: Registry,
    config: Any,
    *,
    samples_per_context: int,
    seed: int,
    batch_prompts: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Generate for every context of ``source`` (in order) and gather every metric."""
    texts: list[str] = []
    meta: list[dict[str, Any]] = []
    group: list[int] = []
    per_reward: dict[str, list[float]] = {k: [] for k in rewards}
    records = source.records
    with tqdm.tqdm(total=len(records), unit="ctx", desc="eval", disable=not progress) as bar:
        for start in range(0, len(records), batch_prompts):
            chunk = records[start : start + batch_prompts]
            batch_seed = step_seed(seed, 1_000_000 + start // batch_prompts, 0)
            seed_everything(batch_seed)
            rollout = sampler.generate([source.prompt(r) for r in chunk], samples_per_context, batch_seed)
            for key, provider in rewards.items():
                res = check_reward_result(provider.score(rollout), plugin=provider.name,
                                          granularity=provider.granularity, rollout=rollout)
                per_reward[key] += res.to_sentence(rollout.completion_mask).tolist()
            texts += rollout.texts
            meta += rollout.meta or [dict(chunk[int(g)]) for g in rollout.group]
            group += [start + int(g) for g in rollout.group]
            bar.update(len(chunk))
    per_sample = {f"reward/{k}": v for k, v in per_reward.items()}
    scalars: dict[str, float] = {}
    weights: dict[str, list[float]] = {}
    for extra in registry.pm.hook.rlgen_eval_metrics(texts=texts, meta=meta, group=group, rewards=per_reward,
                                                     config=config):
        for name, value in (extra or {}).items():
            if isinstance(value, (int, float)):
                scalars[name] = float(value)
                continue
            if isinstance(value, dict):
                if set(value) != {"values", "weights"}:
                    raise ConfigError(f"eval metric '{name}': a weighted metric is {{'values': [...], 'weights': [...]}}, "
                                      f"got keys {sorted(value)}")
                w = [float(x) for x in value["weights"]]
                if len(w) != len(texts) or any(x < 0 for x in w):
                    raise ConfigError(f"eval metric '{name}' needs one weight >= 0 per completion ({len(texts)}), "
                                      f"got {len(w)}")
                weights[name] = w
                value = value["values"]
            values = [float(v) for v in value]
            if len(values) != len(texts):
                raise ConfigError(f"eval metric '{name}' has {len(values)} values for {len(texts)} completions")
            per_sample[name] = values
    result = EvalResult(per_sample, scalars, texts, meta, group, weights=weights)
    result.summary = summarize(result, seed=seed)
    return result


def evaluate_policy(
    config: RunConfig,
    *,
    policy: str | None = None,
    sampler: Sampler | None = None,
    rewards: dict[str, RewardProvider] | None = None,
    registry: Registry | None = None,
    data: str | None = None,
    limit: int | None = None,
    samples_per_context: int | None = None,
    seed: int | None = None,
    baseline: "EvalResult | None" = None,
    output_dir: Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate a policy on the config's eval contexts: generate, score every metric, summarise.

    The one evaluation behind ``rlgen eval``, the periodic evaluation of a run and plugin labs.

    Args:
        config: the run config (prompt template, sampler, rewards, ``eval`` section).
        policy: a policy folder or model spec to evaluate instead of ``model.path``.
        sampler: an already set-up sampler to generate with (the live policy of a run); the
            caller keeps and closes it. Default: the configured sampler, built, set up and closed here.
        rewards: already set-up reward instances by key (the caller closes them); default: fresh ones,
            closed here. Stateful rewards must not share instances with training.
        data, limit, samples_per_context, seed: override ``eval.data``, ``eval.limit``,
            ``eval.samples_per_context`` and ``run.seed``.
        baseline: an evaluation of the same contexts, for relative deltas (Eq. 10).
        output_dir: where plugins may write (their RunContext's output_dir); default the run folder.
    """
    config, plan, registry = session.with_policy(config, policy, registry)
    ev = config.eval
    seed = config.run.seed if seed is None else seed
    source = session.eval_contexts(config, registry, data, limit)
    context = session.run_context(config, registry, output_dir or Path(config.run.output_dir), seed=seed)
    own: list = []
    if sampler is None:
        sampler = plan.sampler.build()  # type: ignore[assignment]
        own.append(sampler)
    if rewards is None:
        rewards = session.build_rewards(plan)
        own += rewards.values()
    with session.plugins_set_up(context, own):
        result = run_evaluation(sampler, rewards, source, registry, config, seed=seed,  # type: ignore[arg-type]
                                batch_prompts=ev.batch_prompts, progress=progress,
                                samples_per_context=samples_per_context or ev.samples_per_context)
    result.summary = summarize(result, baseline, seed=seed)
    return result


def context_totals(result: EvalResult, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(context ids, numerators, denominators)`` of a metric: its mean over any set of contexts is
    sum(numerators) / sum(denominators).

    Unweighted: each context's mean over denominator 1, so every context counts alike, whatever its number
    of samples. Weighted: sum(w v) over sum(w) per context, so the mean over all contexts is the set measure.
    """
    v = torch.tensor(result.per_sample[name], dtype=torch.float64)
    ids, inverse = torch.unique(torch.tensor(result.group), return_inverse=True)
    if name in result.weights:
        w = torch.tensor(result.weights[name], dtype=torch.float64)
        num = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, w * v)
        den = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, w)
        return ids, num, den
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, v)
    counts = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(v))
    return ids, sums / counts, torch.ones(len(ids), dtype=torch.float64)


def _resampled(num: torch.Tensor, den: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The metric on every bootstrap resample of contexts (rows of ``idx``); NaN where it weighs nothing."""
    d = den[idx].sum(dim=1)
    return torch.where(d > 0, num[idx].sum(dim=1) / d.clamp(min=1e-300), torch.nan)


def _interval(boots: torch.Tensor, level: float) -> tuple[float, float]:
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    return float(boots.nanquantile(lo_q)), float(boots.nanquantile(hi_q))


def _baseline_totals(result: EvalResult, baseline: EvalResult, name: str, ids: torch.Tensor):
    b_ids, b_num, b_den = context_totals(baseline, name)
    if not torch.equal(ids, b_ids):
        raise ConfigError(f"the baseline was evaluated on other contexts than this run ({len(b_ids)} vs {len(ids)})")
    return b_num, b_den


def paired_difference(result: EvalResult, baseline: EvalResult, name: str, *, seed: int = 0,
                      level: float = 0.95) -> dict[str, float] | None:
    """``result - baseline`` of a per-completion metric with its paired bootstrap CI over the shared contexts
    (the same resampled contexts for both); None when either lacks the metric or the contexts differ."""
    if name not in result.per_sample or name not in baseline.per_sample:
        return None
    ids, num, den = context_totals(result, name)
    try:
        b_num, b_den = _baseline_totals(result, baseline, name, ids)
    except ConfigError:
        return None
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(ids), (BOOTSTRAP_SAMPLES, len(ids)), generator=gen)
    diffs = _resampled(num, den, idx) - _resampled(b_num, b_den, idx)
    lo, hi = _interval(diffs, level)
    return {"diff": float(num.sum() / den.sum() - b_num.sum() / b_den.sum()), "ci_low": lo, "ci_high": hi}


def summarize(
    result: EvalResult, baseline: EvalResult | None = None, *, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Mean and bootstrap CI (over contexts) of every per-sample metric; with a baseline, the
    relative delta (x - base) / base (Eq. 10) and the difference x - base, each with its paired
    bootstrap CI (the relative delta's only where no resample has a baseline of 0)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    for name in sorted(result.per_sample):
        ids, num, den = context_totals(result, name)
        idx = torch.randint(len(ids), (BOOTSTRAP_SAMPLES, len(ids)), generator=gen)
        boots = _resampled(num, den, idx)
        mean = num.sum() / den.sum()
        lo, hi = _interval(boots, level)
        row = {"mean": float(mean), "ci_low": lo, "ci_high": hi}
        if baseline is not None and name in baseline.per_sample:
            b_num, b_den = _baseline_totals(result, baseline, name, ids)
            base_mean = b_num.sum() / b_den.sum()
            b_boot = _resampled(b_num, b_den, idx)  # paired: the same resampled contexts for both
            row["baseline"] = float(base_mean)
            row["diff"] = float(mean - base_mean)
            row["diff_ci_low"], row["diff_ci_high"] = _interval(boots - b_boot, level)
            if abs(float(base_mean)) > 1e-12:
                row["delta"] = float((mean - base_mean) / abs(base_mean))
                # a resample whose baseline is 0 has no relative delta (a few contexts of 0/1 outcomes, e.g. one
                # vertical's compliance): the interval is then undefined, not a division by a clamp
                if bool((b_boot.abs() > 1e-12).all()):
                    deltas = (boots - b_boot) / b_boot.abs()
                    row["delta_ci_low"], row["delta_ci_high"] = _interval(deltas, level)
        out[name] = row
    for name, value in sorted(result.scalars.items()):
        out[name] = {"mean": value}
    return out


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    has_base = any("baseline" in row for row in summary.values())
    head = "| metric | mean | 95% CI |" + (" baseline | difference [95% CI] | relative delta | delta 95% CI |"
                                           if has_base else "")
    sep = "| --- | ---: | --- |" + (" ---: | --- | ---: | --- |" if has_base else "")
    lines = [head, sep]
    for name, row in summary.items():
        ci = f"[{row['ci_low']:.4g}, {row['ci_high']:.4g}]" if "ci_low" in row else ""
        line = f"| {name} | {row['mean']:.4g} | {ci} |"
        if has_base:
            if "baseline" in row:
                line += f" {row['baseline']:.4g} | {row['diff']:+.4g} [{row['diff_ci_low']:+.4g}, {row['diff_ci_high']:+.4g}] |"
            else:
                line += " | |"
            if "delta_ci_low" in row:
                line += f" {row['delta']:+.2%} | [{row['delta_ci_low']:+.2%}, {row['delta_ci_high']:+.2%}] |"
            elif "delta" in row:
                line += f" {row['delta']:+.2%} | undefined (baseline 0 in some resamples) |"
            else:
                line += " | |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_evaluation(result: EvalResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result.to_json(), ensure_ascii=False))
    (out_dir / "eval.md").write_text(markdown_table(result.summary))


def load_evaluation(path: Path) -> EvalResult:
    p = path / "eval.json" if path.is_dir() else path
    if not p.exists():
        raise ConfigError(f"baseline evaluation {p} does not exist (run `rlgen eval` for the baseline first)")
    return EvalResult.from_json(json.loads(p.read_text()))
