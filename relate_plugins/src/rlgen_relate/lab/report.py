"""What the demo and the ablation leave for people to read: PNG plots and Markdown sections.

Everything here reads what the pipeline wrote (``metrics.jsonl`` of a run, ``eval.json`` of an
evaluation), so a report can be rebuilt from finished folders without running anything again.
Plots use matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

import rlgen
from rlgen import EvalResult

#: the evaluation metrics a reader looks at first, in report order: key, label, higher is better
HEADLINE: list[tuple[str, str, bool]] = [
    ("relate/compliance_rate", "Compliance rate (Eq. 11: passes risk control and format)", True),
    ("relate/format_pass_rate", "Format pass rate", True),
    ("relate/risk_pass_rate", "Risk-control pass rate", True),
    ("relate/fluent_rate", "Fluent (no stutter or repeated phrase)", True),
    ("relate/consistent_rate", "Consistent (no clause denying what the ad or advertiser asserts)", True),
    ("relate/factual_rate", "Factual (no claim the advertiser's facts do not support)", True),
    ("relate/sim_ctcvr", "Simulator CTCVR (true p_click x p_conv)", True),
    ("relate/pred_ctcvr", "Predicted CTCVR (reward model)", True),
    ("relate/sim_ctr", "Simulator CTR", True),
    ("relate/sim_shown_rate", "Shown by simulated review", True),
    ("relate/diversity", "Diversity (Eq. 12, [0, 1])", True),
    ("relate/distinct_2", "distinct-2", True),
    ("relate/self_bleu", "self-BLEU (lower is more diverse)", False),
    ("reward/relate.relevance", "Mean relevance (reward)", True),
    ("reward/relate.correctness", "Correctness (reward)", True),
    ("reward/relate.length", "Length (reward)", True),
    ("reward/relate.format", "Format (reward)", True),
    ("reward/relate.risk", "Risk control (reward, token sum)", True),
    ("reward/relate.diversity", "Diversity (reward, token sum)", True),
    ("reward/relate.ctcvr", "CTCVR (reward, as trained on)", True),
]
PERCENT = {"relate/sim_ctcvr", "relate/pred_ctcvr", "relate/sim_ctr"}


# -- reading ------------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The per-step rows of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def reward_names(rows: Sequence[dict[str, float]]) -> list[str]:
    """Reward keys logged as ``reward/<name>/mean`` (the weighted total last)."""
    names = sorted({k.split("/")[1] for row in rows for k in row if k.startswith("reward/") and k.endswith("/mean")})
    return [n for n in names if n != "total"] + (["total"] if "total" in names else [])


def load_eval(path: str | Path) -> EvalResult:
    p = Path(path)
    p = p / "eval.json" if p.is_dir() else p
    return EvalResult.from_json(json.loads(p.read_text(encoding="utf-8")))


# -- plots --------------------------------------------------------------------------------------


def _grid(n: int, cols: int = 3, size: tuple[float, float] = (4.2, 3.0)):
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(n / cols))
    cols = min(cols, max(n, 1))
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _series(rows: Sequence[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_reward_curves(rows: Sequence[dict[str, float]], path: str | Path, title: str = "Rewards over training steps") -> Path:
    """One panel per reward (batch mean per step, with a moving average) and one for the weighted total."""
    names = reward_names(rows)
    fig, axes = _grid(len(names))
    window = max(1, len(rows) // 8)
    for ax, name in zip(axes, names):
        steps, values = _series(rows, f"reward/{name}/mean")
        ax.plot(steps, values, color="0.7", lw=1, marker="." if len(steps) < 30 else None, label="batch mean")
        if window > 1:
            ax.plot(steps, _smooth(values, window), color="C0", lw=2, label=f"moving mean ({window})")
        ax.set_title(name if name != "total" else "weighted total (Eq. 2)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if axes and window > 1:
        axes[0].legend(fontsize=8)
    fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


TRAINING_KEYS = [
    ("trainer/loss", "GRPO loss (Eq. 6)"),
    ("trainer/kl", "KL to reference"),
    ("trainer/entropy", "policy entropy"),
    ("trainer/grad_norm", "gradient norm"),
    ("completion/tokens_mean", "completion tokens"),
    ("advantage/zero_var_group_frac", "groups with zero variance"),
    ("advantage/token_nonzero_frac", "tokens with token-level credit"),
    ("time/step_s", "seconds per step"),
]


def plot_training(rows: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Optimisation health: loss, KL, entropy, gradient norm, lengths, flat groups, step time."""
    keys = [(k, label) for k, label in TRAINING_KEYS if any(k in r for r in rows)]
    fig, axes = _grid(len(keys), cols=4, size=(3.6, 2.6))
    for ax, (key, label) in zip(axes, keys):
        steps, values = _series(rows, key)
        ax.plot(steps, values, color="C1", lw=1.5)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle("Training dynamics")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def plot_curves_by_config(runs: dict[str, Sequence[dict[str, float]]], path: str | Path,
                          title: str = "Training curves of individual rewards per configuration") -> Path:
    """Figure 3 analogue: one panel per reward, one line per configuration."""
    return plot_curves_over_seeds({config: [rows] for config, rows in runs.items()}, path, title=title)


def plot_curves_over_seeds(runs: dict[str, Sequence[Sequence[dict[str, float]]]], path: str | Path,
                           title: str = "Training curves of individual rewards per configuration") -> Path:
    """Figure 3 analogue over seeds: one panel per reward, per configuration the mean over its seeds' (smoothed)
    curves with a band from the lowest to the highest seed at each step."""
    names = [n for n in dict.fromkeys(n for seeds in runs.values() for rows in seeds for n in reward_names(rows))
             if n != "total"]
    fig, axes = _grid(len(names))
    longest = max((len(rows) for seeds in runs.values() for rows in seeds), default=1)
    window = max(1, longest // 8)
    n_seeds = max((len(seeds) for seeds in runs.values()), default=1)
    for ax, name in zip(axes, names):
        for i, (config, seeds) in enumerate(runs.items()):
            by_step: dict[int, list[float]] = {}
            for rows in seeds:
                steps, values = _series(rows, f"reward/{name}/mean")
                for step, value in zip(steps, _smooth(values, window)):
                    by_step.setdefault(step, []).append(value)
            # only steps every seed reached, so the band is over the same seeds throughout
            steps = sorted(s for s, v in by_step.items() if len(v) == len(seeds))
            if not steps:
                continue
            mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
            ax.plot(steps, mean, color=f"C{i}", lw=1.8, label=config)
            if len(seeds) > 1:
                ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                                color=f"C{i}", alpha=0.18, lw=0)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if axes:
        axes[0].legend(fontsize=8)
    notes = [f"moving mean over {window} steps"] if window > 1 else []
    if n_seeds > 1:
        notes.append(f"line: mean of {n_seeds} seeds, band: lowest to highest seed")
    fig.suptitle(title + (f" ({'; '.join(notes)})" if notes else ""))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


# -- numbers ------------------------------------------------------------------------------------


def context_means(values: Sequence[float], group: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(context ids, mean of the values of each context)``, contexts in id order."""
    v = torch.tensor(list(values), dtype=torch.float64)
    ids, inverse = torch.unique(torch.tensor(list(group)), return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, v)
    counts = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(v))
    return ids, sums / counts


def paired_difference(base: EvalResult, trained: EvalResult, key: str, *, seed: int = 0,
                      level: float = 0.95) -> dict[str, float] | None:
    """trained - base of a per-completion metric, with a paired bootstrap CI over the shared contexts.

    The core's relative delta (Eq. 10) is undefined when the base is 0 (a base policy that never
    passes format); the absolute difference always is, so the verdicts below rest on it.
    """
    return rlgen.paired_difference(trained, base, key, seed=seed, level=level)


def verdict(diff: dict[str, float] | None, higher_is_better: bool) -> str:
    if diff is None:
        return ""
    lo, hi = diff["ci_low"], diff["ci_high"]
    if lo > 0 or hi < 0:
        better = (lo > 0) == higher_is_better
        return "**better**" if better else "**worse**"
    return "no clear change"


def _fmt(key: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3%}" if key in PERCENT else f"{value:.3f}"


def _ci(key: str, row: dict[str, float]) -> str:
    if "ci_low" not in row:
        return ""
    return f" [{_fmt(key, row['ci_low'])}, {_fmt(key, row['ci_high'])}]"


#: the rows of the base -> warm start -> trained table: what the warm start is for, and what RL adds
STAGE_KEYS: list[tuple[str, str, bool]] = [
    ("relate/compliance_rate", "Compliance rate (Eq. 11)", True),
    ("relate/format_pass_rate", "Format pass rate", True),
    ("relate/fluent_rate", "Fluent (no stutter, no repeated phrase)", True),
    ("relate/consistent_rate", "Consistent (no self-contradiction)", True),
    ("relate/factual_rate", "Factual (no unsupported claim)", True),
    ("relate/sim_ctcvr", "Simulator CTCVR", True),
    ("relate/diversity", "Diversity (Eq. 12, [0, 1])", True),
    ("relate/distinct_2", "distinct-2", True),
    ("relate/self_bleu", "self-BLEU (lower is more diverse)", False),
]


def stages_table(base: EvalResult, stages: dict[str, EvalResult], keys: Iterable[tuple[str, str, bool]] = STAGE_KEYS,
                 *, seed: int = 0) -> str:
    """Markdown: the base's mean, then each later policy's mean with its difference from the base [paired 95% CI]
    and the verdict, e.g. base -> warm start -> trained."""
    names = list(stages)
    lines = ["| metric | base | " + " | ".join(f"{n} (- base [95% CI])" for n in names) + " |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for key, label, higher in keys:
        if key not in base.summary or any(key not in r.summary for r in stages.values()):
            continue
        scale, unit = (100.0, " pp") if key in PERCENT else (1.0, "")
        cells = []
        for result in stages.values():
            diff = paired_difference(base, result, key, seed=seed)
            cell = _fmt(key, result.summary[key]["mean"])
            if diff is not None:
                judged = verdict(diff, higher)
                cell += (f" ({diff['diff'] * scale:+.3f}{unit} [{diff['ci_low'] * scale:+.3f}, "
                         f"{diff['ci_high'] * scale:+.3f}]{', ' + judged if judged != 'no clear change' else ''})")
            cells.append(cell)
        lines.append(f"| {label} | {_fmt(key, base.summary[key]['mean'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(base: EvalResult, trained: EvalResult, keys: Iterable[tuple[str, str, bool]] = HEADLINE,
                     *, seed: int = 0) -> str:
    """Markdown: base and trained means with 95% CIs, the relative delta of Eq. 10 with its CI, the
    absolute difference with its paired CI, and a verdict from the latter."""
    lines = [
        "| metric | base [95% CI] | trained [95% CI] | relative delta, Eq. 10 [95% CI] | trained - base [95% CI] | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label, higher in keys:
        b, t = base.summary.get(key), trained.summary.get(key)
        if b is None or t is None:
            continue
        rel = ""
        if "delta_ci_low" in t:
            rel = f"{t['delta']:+.1%} [{t['delta_ci_low']:+.1%}, {t['delta_ci_high']:+.1%}]"
        elif "delta" in t:
            rel = f"{t['delta']:+.1%} [undefined: base 0 in some resamples]"
        elif "ci_low" in t:
            rel = "undefined (base is 0)"
        diff = paired_difference(base, trained, key, seed=seed)
        if diff is not None:
            scale = 100.0 if key in PERCENT else 1.0
            unit = " pp" if key in PERCENT else ""
            absolute = (f"{diff['diff'] * scale:+.3f}{unit} [{diff['ci_low'] * scale:+.3f}, "
                        f"{diff['ci_high'] * scale:+.3f}]")
            judged = verdict(diff, higher)
        else:  # set-level numbers without per-completion contributions have nothing to resample
            d = t["mean"] - b["mean"]
            absolute = f"{d:+.3f}"
            judged = ("higher" if d > 0 else "lower" if d < 0 else "same") + " (no CI: one number per set)"
        lines.append(f"| {label} | {_fmt(key, b['mean'])}{_ci(key, b)} | {_fmt(key, t['mean'])}{_ci(key, t)} "
                     f"| {rel} | {absolute} | {judged} |")
    return "\n".join(lines) + "\n"


#: fewest contexts of a vertical for a verdict on it: a percentile bootstrap of one or two contexts gives a
#: zero-width interval (one context that flipped would read as "better with confidence")
MIN_VERTICAL_CONTEXTS = 5


def vertical_compliance_section(base: EvalResult, trained: EvalResult, *, seed: int = 0) -> str:
    """Markdown: compliance rate (Eq. 11) per vertical for base and trained, with the paired difference."""
    from ..evaluation import COMPLIANCE_BY_VERTICAL

    keys = sorted(k for k in trained.per_sample if k.startswith(COMPLIANCE_BY_VERTICAL) and k in base.per_sample)
    if not keys:
        return "The eval contexts carry no `vertical` field, so there is no per-vertical breakdown.\n"
    lines = ["| vertical | contexts | base | trained | trained - base [95% CI] | verdict |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    worse, better, judged_n = [], [], 0
    for key in keys:
        vertical = key[len(COMPLIANCE_BY_VERTICAL):]
        contexts = len({g for g, w in zip(trained.group, trained.weights.get(key, [])) if w > 0})
        diff = paired_difference(base, trained, key, seed=seed)
        if diff is None:
            continue
        if contexts >= MIN_VERTICAL_CONTEXTS:
            judged = verdict(diff, True)
            judged_n += 1
            (better if "better" in judged else worse if "worse" in judged else []).append(vertical)
            ci = f" [{diff['ci_low'] * 100:+.1f}, {diff['ci_high'] * 100:+.1f}]"
        else:
            judged, ci = f"too few contexts for a verdict (< {MIN_VERTICAL_CONTEXTS})", ""
        lines.append(f"| {vertical} | {contexts} | {base.summary[key]['mean']:.1%} | {trained.summary[key]['mean']:.1%} "
                     f"| {diff['diff'] * 100:+.1f} pp{ci} | {judged} |")
    lines.append("")
    lines.append(f"{judged_n} of {len(keys)} verticals have at least {MIN_VERTICAL_CONTEXTS} contexts; of those, better "
                 f"with confidence in {len(better)}" + (f" ({', '.join(better)})" if better else "")
                 + f" and worse in {len(worse)}" + (f" ({', '.join(worse)})" if worse else "")
                 + ". The table shows where compliance lags; the overall rate above is the verdict.")
    return "\n".join(lines) + "\n"


def ctcvr_gap(result: EvalResult) -> dict[str, float] | None:
    """Predicted and simulator CTCVR of one evaluation, and their gap (the reward-hacking indicator)."""
    s = result.summary
    if "relate/pred_ctcvr" not in s or "relate/sim_ctcvr" not in s:
        return None
    pred, sim = s["relate/pred_ctcvr"]["mean"], s["relate/sim_ctcvr"]["mean"]
    return {"pred": pred, "sim": sim, "gap": pred - sim, "ratio": pred / sim if sim > 0 else float("inf")}


def ctcvr_gap_section(base: EvalResult, trained: EvalResult) -> str:
    gb, gt = ctcvr_gap(base), ctcvr_gap(trained)
    if gb is None or gt is None:
        return "Predicted or simulator CTCVR is missing from the evaluations (no relate.ctcvr reward or no ad contexts).\n"

    def ratio(g: dict[str, float]) -> str:
        return f"{g['ratio']:.2f}x" if math.isfinite(g["ratio"]) else "inf (simulator CTCVR is 0)"

    lines = [
        "| policy | predicted CTCVR | simulator CTCVR | gap (predicted - simulator) | predicted / simulator |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| base | {gb['pred']:.3%} | {gb['sim']:.3%} | {gb['gap'] * 100:+.3f} pp | {ratio(gb)} |",
        f"| trained | {gt['pred']:.3%} | {gt['sim']:.3%} | {gt['gap'] * 100:+.3f} pp | {ratio(gt)} |",
        "",
    ]
    d_pred = trained.summary["relate/pred_ctcvr"].get("delta")
    d_sim = trained.summary["relate/sim_ctcvr"].get("delta")
    if d_pred is not None and d_sim is not None:
        lines.append(f"Delta CTCVR (Eq. 10): the reward model predicts {d_pred:+.1%}, the simulated users give {d_sim:+.1%}.")
    growth = gt["gap"] - gb["gap"]
    if gb["sim"] > 0 and gt["sim"] > 0 and abs(gt["ratio"] - gb["ratio"]) > 0.25 * gb["ratio"] and gt["ratio"] > gb["ratio"]:
        lines.append(f"The predicted/simulator ratio grew from {ratio(gb)} to {ratio(gt)}: the policy pleases the reward "
                     "model more than it pleases the simulated users, the signature of reward hacking.")
    else:
        lines.append(f"The gap moved by {growth * 100:+.3f} pp; a gap that grows much faster than the simulator CTCVR "
                     "would mean the policy exploits the reward model (reward hacking).")
    return "\n".join(lines) + "\n"


def _ad_block(text: str) -> str:
    body = text.strip() or "(empty)"
    return "\n".join("    " + line for line in body.splitlines())


def sample_ads_section(base: EvalResult, trained: EvalResult, k: int = 6) -> str:
    """The first ``k`` eval contexts with the base ad and the trained ad, each with its verdicts."""
    def first_index(result: EvalResult) -> dict[int, int]:
        out: dict[int, int] = {}
        for i, g in enumerate(result.group):
            out.setdefault(int(g), i)
        return out

    bi, ti = first_index(base), first_index(trained)
    parts = []
    for g in list(bi)[:k]:
        if g not in ti:
            continue
        ctx = base.meta[bi[g]]
        parts.append(f"**{ctx.get('advertiser', '')}**: query *{ctx.get('query', '')}*, bid word *{ctx.get('bid_word', '')}*\n")
        for label, res, i in (("base", base, bi[g]), ("trained", trained, ti[g])):
            flags = []
            for key, name in (("relate/compliance_rate", "compliant"), ("relate/format_pass_rate", "format ok")):
                if key in res.per_sample:
                    flags.append(name if res.per_sample[key][i] >= 1 else f"not {name}")
            if "relate/sim_ctcvr" in res.per_sample:
                flags.append(f"simulator CTCVR {res.per_sample['relate/sim_ctcvr'][i]:.3%}")
            parts.append(f"{label} ({', '.join(flags)}):\n\n{_ad_block(res.texts[i])}\n")
    return "\n".join(parts)


def write_json(path: str | Path, data: Any) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return out
