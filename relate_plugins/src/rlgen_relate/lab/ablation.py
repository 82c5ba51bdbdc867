"""`rlgen-relate ablation`: paper Table 2's five configurations, trained alike, and the Table 3 / Figure 3 analogues.

Models 1-4 and RELATE come from the shipped presets (:func:`rlgen_relate.presets.preset`) and are trained with
the same seed, steps, prompts and sampling seeds on the same data and CTCVR model (built once, with the demo's
stages). Every final policy is then evaluated with the *full* RELATE reward set on the same eval contexts, so
the four Table 3 columns are measured the same way for every configuration:

- structural quality: mean of the length and format rewards;
- CTCVR: the simulator's true CTCVR in percent (the reward model's prediction is shown beside it);
- diversity: Eq. 12 in [0, 1];
- semantic quality: mean of the correctness, relevance and risk-control rewards.

For Figure 3 every configuration also *logs* the rewards it does not train on, with weight 0: the combiner
leaves zero-weight rewards out (``relate.credit``), so the training signal is exactly Table 2's. Where our
ordering of the configurations disagrees with the paper's Table 3, the report lists the disagreements.

With ``seeds`` > 1 every configuration is trained at training seeds ``seed, seed + 1, ...`` (``run.seed``) and
evaluated on the same contexts with the same sampling seed; each column then gets a mean and 95% CI over seeds
and contexts, and every pair of configurations a paired difference (same seeds, same contexts) with its CI
(:mod:`.seed_stats`), so the report can say which of the paper's orderings hold with confidence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rlgen import ConfigError, EvalResult, load_config, make_warm_start

from . import report as rep
from .seed_stats import Interval, interval, paired_interval
from .demo import FULL, QUICK, Schedule, build_config, evaluate_policy, train_ctcvr_model, train_policy, write_data, write_impression_logs
from ..presets import NAMES, TABLE_2

#: paper Table 3 (Qwen3-8B, step 150): the orderings we compare with, not numbers we expect to match
PAPER_TABLE_3: dict[str, dict[str, float]] = {
    "model1": {"structural": 0.937, "ctcvr": 0.128, "diversity": 0.478, "semantic": 0.881},
    "model2": {"structural": 0.834, "ctcvr": 0.450, "diversity": 0.211, "semantic": 0.658},
    "model3": {"structural": 0.824, "ctcvr": 0.320, "diversity": 0.894, "semantic": 0.621},
    "model4": {"structural": 0.812, "ctcvr": 0.184, "diversity": 0.923, "semantic": 0.935},
    "relate": {"structural": 0.815, "ctcvr": 0.203, "diversity": 0.965, "semantic": 0.939},
}
COLUMNS: list[tuple[str, str]] = [
    ("structural", "Structural quality"),
    ("ctcvr", "CTCVR (%)"),
    ("diversity", "Diversity"),
    ("semantic", "Semantic quality"),
]
LABELS = {"model1": "Model 1", "model2": "Model 2", "model3": "Model 3", "model4": "Model 4", "relate": "RELATE",
          "base": "base policy", "warm_start": "warm start (every model's start)"}
STRUCTURAL = ("reward/relate.length", "reward/relate.format")
SEMANTIC = ("reward/relate.correctness", "reward/relate.relevance", "reward/relate.risk")
#: beside the Table 3 columns in the RELATE vs Model 4 comparison: where token-level credit acts, and Eq. 11
CREDIT_METRICS: list[tuple[str, str, tuple[str, ...]]] = [
    ("risk_reward", "Risk control (reward, token level)", ("reward/relate.risk",)),
    ("diversity_reward", "Diversity (reward, token level)", ("reward/relate.diversity",)),
    ("repetition_reward", "Repetition (reward, token level)", ("reward/repetition",)),
    ("overflow_reward", "Field overflow (reward, token level)", ("reward/relate.overflow",)),
    ("compliance", "Compliance rate (Eq. 11)", ("relate/compliance_rate",)),
]
#: per column: the metric keys averaged into it and the scale it is shown at (CTCVR in percent)
COLUMN_KEYS: dict[str, tuple[tuple[str, ...], float]] = {
    "structural": (STRUCTURAL, 1.0),
    "ctcvr": (("relate/sim_ctcvr",), 100.0),
    "diversity": (("relate/diversity",), 1.0),
    "semantic": (SEMANTIC, 1.0),
    **{key: (keys, 1.0) for key, _, keys in CREDIT_METRICS},
}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def table3_row(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """The four Table 3 columns (and predicted CTCVR) from one evaluation summary."""
    missing = [k for k in (*STRUCTURAL, *SEMANTIC, "relate/sim_ctcvr", "relate/diversity") if k not in summary]
    if missing:
        raise ConfigError(f"ablation: the evaluation lacks {missing}; evaluate with the full RELATE reward set")
    row = {
        "structural": _mean([summary[k]["mean"] for k in STRUCTURAL]),
        "ctcvr": 100.0 * summary["relate/sim_ctcvr"]["mean"],
        "diversity": summary["relate/diversity"]["mean"],
        "semantic": _mean([summary[k]["mean"] for k in SEMANTIC]),
    }
    if "relate/pred_ctcvr" in summary:
        row["pred_ctcvr"] = 100.0 * summary["relate/pred_ctcvr"]["mean"]
    return row


def table3_contexts(result: EvalResult) -> dict[str, torch.Tensor]:
    """Every column of :data:`COLUMN_KEYS` per eval context (contexts in id order), from one evaluation."""
    out: dict[str, torch.Tensor] = {}
    for col, (keys, scale) in COLUMN_KEYS.items():
        if not all(k in result.per_sample for k in keys):
            continue
        per_key = [rep.context_means(result.per_sample[k], result.group)[1] for k in keys]
        out[col] = scale * torch.stack(per_key).mean(dim=0)
    return out


def seed_statistics(per_seed: dict[str, list[dict[str, torch.Tensor]]], *, seed: int = 0) -> dict[str, Any]:
    """From each configuration's per-seed :func:`table3_contexts`: the mean and CI of every column over seeds and
    contexts (``intervals``), and every pair of Table 2 configurations' paired difference (``pairs``, keyed
    ``"a-b"`` for a - b, same seeds and contexts)."""
    intervals: dict[str, dict[str, Interval]] = {}
    stacked: dict[str, dict[str, torch.Tensor]] = {}
    for name, seeds in per_seed.items():
        cols = set.intersection(*(set(s) for s in seeds))
        stacked[name] = {c: torch.stack([s[c] for s in seeds]) for c in cols}
        intervals[name] = {c: interval(v, seed=seed) for c, v in stacked[name].items()}
    pairs: dict[str, dict[str, Interval]] = {}
    names = [n for n in NAMES if n in stacked]
    for a, b in combinations(names, 2):
        shared = [c for c in COLUMN_KEYS if c in stacked[a] and c in stacked[b]]
        pairs[f"{a}-{b}"] = {c: paired_interval(stacked[a][c], stacked[b][c], seed=seed) for c in shared}
    return {"intervals": intervals, "pairs": pairs}


def pair_difference(pairs: dict[str, dict[str, Interval]], a: str, b: str, col: str) -> Interval | None:
    """a - b from :func:`seed_statistics`' pairs, whichever way round they were stored."""
    if col in pairs.get(f"{a}-{b}", {}):
        return pairs[f"{a}-{b}"][col]
    if col in pairs.get(f"{b}-{a}", {}):
        d = pairs[f"{b}-{a}"][col]
        return Interval(-d.mean, -d.ci_high, -d.ci_low)
    return None


def table3_markdown(rows: dict[str, dict[str, float]], step: int,
                    intervals: dict[str, dict[str, Interval]] | None = None) -> str:
    """Our Table 3 analogue (configurations in Table 2 order, extra rows such as the base after them); with
    ``intervals``, each column's 95% CI beside its mean."""
    order = [n for n in NAMES if n in rows] + [n for n in rows if n not in NAMES]
    lines = [f"| Model ID (step {step}) | Structural Quality | CTCVR (%) simulator | CTCVR (%) predicted | Diversity | Semantic Quality |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in order:
        r = rows[name]
        best = {c: max(rows[n][c] for n in order if n in TABLE_2) for c, _ in COLUMNS} if any(n in TABLE_2 for n in order) else {}

        def cell(col: str, digits: int = 3) -> str:
            text = f"{r[col]:.{digits}f}"
            text = f"**{text}**" if name in TABLE_2 and best and abs(r[col] - best[col]) < 1e-12 else text
            ci = (intervals or {}).get(name, {}).get(col)
            return f"{text} [{ci.ci_low:.{digits}f}, {ci.ci_high:.{digits}f}]" if ci is not None else text

        pred = f"{r['pred_ctcvr']:.3f}" if "pred_ctcvr" in r else "n/a"
        lines.append(f"| {LABELS.get(name, name)} | {cell('structural')} | {cell('ctcvr')} | {pred} | "
                     f"{cell('diversity')} | {cell('semantic')} |")
    return "\n".join(lines) + "\n"


def paper_markdown() -> str:
    lines = ["| Model ID (paper, step 150) | Structural Quality | CTCVR (%) | Diversity | Semantic Quality |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name in NAMES:
        p = PAPER_TABLE_3[name]
        lines.append(f"| {LABELS[name]} | {p['structural']:.3f} | {p['ctcvr']:.3f} | {p['diversity']:.3f} | {p['semantic']:.3f} |")
    return "\n".join(lines) + "\n"


def compare_with_paper(rows: dict[str, dict[str, float]],
                       pairs: dict[str, dict[str, Interval]] | None = None) -> list[str]:
    """Per column: both orderings, and every pair of configurations that the two order differently; with
    ``pairs`` (paired differences with CIs), which of the paper's pair orderings hold or flip significantly."""
    names = [n for n in NAMES if n in rows]
    notes = []
    for col, label in COLUMNS:
        ours = sorted(names, key=lambda n: -rows[n][col])
        paper = sorted(names, key=lambda n: -PAPER_TABLE_3[n][col])
        flipped, held_sig, flipped_sig = [], [], []
        for a, b in combinations(names, 2):
            p = PAPER_TABLE_3[a][col] - PAPER_TABLE_3[b][col]
            o = rows[a][col] - rows[b][col]
            hi, lo = (a, b) if p > 0 else (b, a)
            if p * o < 0 or (o == 0) != (p == 0):
                flipped.append(f"{LABELS[hi]} > {LABELS[lo]}")
            d = pair_difference(pairs or {}, hi, lo, col)
            if d is not None and d.significant:
                (held_sig if d.mean > 0 else flipped_sig).append(f"{LABELS[hi]} > {LABELS[lo]}")
        n_pairs = len(names) * (len(names) - 1) // 2
        order = " > ".join(LABELS[n] for n in ours)
        paper_order = " > ".join(LABELS[n] for n in paper)
        if flipped:
            note = (f"- **{label}: disagrees with the paper** on {len(flipped)} of {n_pairs} pairs. Ours: {order}. "
                    f"Paper: {paper_order}. The paper has {', '.join(flipped)}; we have the opposite.")
        else:
            note = f"- {label}: same ordering as the paper ({order})."
        if pairs is not None:
            note += (f" With 95% confidence, {len(held_sig)} of the paper's {n_pairs} pair orderings hold"
                     + (f" ({', '.join(held_sig)})" if held_sig else "")
                     + f" and {len(flipped_sig)} are reversed"
                     + (f" (the paper has {', '.join(flipped_sig)})" if flipped_sig else "")
                     + f"; {n_pairs - len(held_sig) - len(flipped_sig)} are within noise.")
        notes.append(note)
    return notes


def relate_vs_model4(stats: dict[str, Any]) -> str:
    """Markdown: the paper's central claim, RELATE (token-level credit) against Model 4 (the same rewards at
    sentence level), as paired differences over the same seeds and contexts."""
    d = stats["pairs"].get("model4-relate")
    if d is None:
        return "Train both `model4` and `relate` (`--configs`) for this comparison.\n"
    lines = ["| column | RELATE [95% CI] | Model 4 [95% CI] | RELATE - Model 4 [95% CI] | paper | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    relate, model4 = stats["intervals"]["relate"], stats["intervals"]["model4"]
    labels = dict(COLUMNS) | {key: label for key, label, _ in CREDIT_METRICS}
    for col, label in labels.items():
        diff = pair_difference(stats["pairs"], "relate", "model4", col)
        if diff is None:
            continue
        paper = PAPER_TABLE_3["relate"].get(col, float("nan")) - PAPER_TABLE_3["model4"].get(col, float("nan"))
        paper_text = "RELATE higher" if paper > 0 else "Model 4 higher" if paper < 0 else "n/a"
        verdict = ("no significant difference" if not diff.significant
                   else f"**{'RELATE' if diff.mean > 0 else 'Model 4'} higher**")
        r, m = relate[col], model4[col]
        lines.append(f"| {label} | {r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] | {m.mean:.3f} [{m.ci_low:.3f}, "
                     f"{m.ci_high:.3f}] | {diff.mean:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}] | {paper_text} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_ablation_report(out: str | Path, rows: dict[str, dict[str, float]],
                          curves: dict[str, list[dict[str, float]]] | dict[str, list[list[dict[str, float]]]],
                          step: int, info: dict[str, Any] | None = None, stats: dict[str, Any] | None = None) -> Path:
    """``table3.md``, ``figure3.png``, ``ablation.json`` and ``ablation.md`` in ``out``.

    ``curves``: per configuration its run's metric rows, or one list of rows per seed. ``stats``: what
    :func:`seed_statistics` returns, for CIs, significance and the RELATE vs Model 4 section.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    intervals = (stats or {}).get("intervals")
    table = table3_markdown(rows, step, intervals)
    (out / "table3.md").write_text(table, encoding="utf-8")
    # one run per configuration or one per seed: the figure takes per-seed lists
    by_seed = {n: (c if c and isinstance(c[0], list) else [c]) for n, c in curves.items()}
    rep.plot_curves_over_seeds({LABELS.get(n, n): by_seed[n] for n in NAMES if n in by_seed}, out / "figure3.png",
                               title="Figure 3 analogue: training curves of individual rewards")
    json_stats = {}
    if stats:
        json_stats = {"intervals": {n: {c: i.as_dict() for c, i in cols.items()} for n, cols in stats["intervals"].items()},
                      "pairs": {k: {c: i.as_dict() for c, i in cols.items()} for k, cols in stats["pairs"].items()}}
    rep.write_json(out / "ablation.json", {"step": step, "rows": rows, "paper": PAPER_TABLE_3, **(info or {}),
                                           **json_stats})
    info = info or {}
    schedule = info.get("schedule", {})
    seeds = info.get("seeds", [info.get("seed", 0)])
    notes = "\n".join(compare_with_paper(rows, stats["pairs"] if stats else None))
    if len(seeds) > 1:
        trained = (f"trained at {len(seeds)} training seeds ({', '.join(str(x) for x in seeds)}; `run.seed`) with the "
                   f"same {step} steps and prompts")
        cis = (" Each cell: mean over seeds and contexts [95% CI from resampling both]; the base policy has one "
               "seed, so its CI is over contexts only.")
    else:
        trained = f"trained with the same seed ({seeds[0]}), the same\n{step} steps and the same prompts"
        cis = " Each cell: mean [95% CI over eval contexts]." if stats else ""
    credit = ""
    if stats:
        credit = f"""
## RELATE vs Model 4: does token-level credit help?

The paper's central claim: RELATE (token-level credit, Eq. 7) beats Model 4 (the same rewards with the token
rewards demoted to sentence level). Paired differences: the same training seeds and the same eval contexts for both,
resampled together. "paper" is the sign in the paper's Table 3.

{relate_vs_model4(stats)}"""
    text = f"""# Ablation: Table 3 and Figure 3 analogues

Configurations of paper Table 2 from the shipped presets, {trained} on the same data and CTCVR model; policy
{schedule.get('model', '?')}. Each final policy is evaluated with the full RELATE reward set on
{schedule.get('eval_contexts', '?')} eval contexts x {schedule.get('samples_per_context', '?')} samples (the same
contexts and sampling seed for every policy). Columns: structural quality = mean of the length and format rewards;
CTCVR = the simulator's true CTCVR (the reward model's prediction beside it); diversity = Eq. 12 in [0, 1];
semantic quality = mean of the correctness, relevance and risk-control rewards. Bold: best of the five.{cis}

{table}
The paper's Table 3 (Qwen3-8B, 400k real ads, step 150; its scales are its own, so compare orderings, not values):

{paper_markdown()}
## Where our ordering agrees and disagrees with the paper

{notes}

A short CPU schedule on a 135M model is far from the paper's 150 steps of batch 1,440 on Qwen3-8B: read an
ordering as supported only where its paired CI excludes zero.
{credit}
## Figure 3 analogue

Every reward's batch mean per training step, per configuration (rewards a configuration does not train on are
logged at weight 0, which leaves its training signal unchanged){'; the line is the mean over seeds, the band spans the lowest to the highest seed' if len(seeds) > 1 else ''}:

![figure 3](figure3.png)
"""
    path = out / "ablation.md"
    path.write_text(text, encoding="utf-8")
    return path


def with_monitors(raw: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """``raw`` plus every reward of ``full`` (the RELATE config) it lacks, at weight 0: logged, not trained on."""
    present = {r["name"] for r in raw["rewards"]}
    monitors = [{**r, "weight": 0.0} for r in full["rewards"] if r["name"] not in present]
    return {**raw, "rewards": raw["rewards"] + monitors}


@dataclasses.dataclass(frozen=True)
class _Job:
    """One training run of the ablation and its evaluation: everything a worker process needs."""

    train_raw: dict[str, Any]
    eval_raw: dict[str, Any]
    eval_dir: Path
    baseline: Path


def _train_and_evaluate(job: _Job, progress: bool = False) -> tuple[dict[str, float], dict[str, torch.Tensor], list[dict[str, float]]]:
    """Table 3 row, per-context columns and metric curve of one configuration at one training seed."""
    run = train_policy(job.train_raw, progress=progress)
    result = evaluate_policy(job.eval_raw, run["policy"], job.eval_dir, baseline=job.baseline, progress=progress)
    return table3_row(result.summary), table3_contexts(result), rep.read_metrics(Path(run["output_dir"]) / "metrics.jsonl")


def _warm_start(job: tuple[dict[str, Any], dict[str, Any], Path, Path],
                progress: bool = False) -> tuple[str, dict[str, float], dict[str, torch.Tensor]]:
    """One training seed's warm start (the RELATE config's ``warm_start``) and its evaluation: its policy folder,
    Table 3 row and per-context columns. ``job``: the warm start's config, the eval config, eval folder, baseline."""
    raw, eval_raw, eval_dir, baseline = job
    policy = make_warm_start(load_config(raw), progress=progress)
    result = evaluate_policy(eval_raw, str(policy), eval_dir, baseline=baseline, progress=progress)
    return str(policy), table3_row(result.summary), table3_contexts(result)


def from_warm_start(raw: dict[str, Any], policy: str) -> dict[str, Any]:
    """``raw`` trained from a finished warm-start policy, with no warm start of its own."""
    started = {k: v for k, v in raw.items() if k != "warm_start"}
    return {**started, "model": {**raw["model"], "path": policy}}


def _pin_worker(core_slices: Any) -> None:
    """Worker initializer: take one slice of cores off the queue and keep to it for the worker's life."""
    cores = core_slices.get()
    os.sched_setaffinity(0, cores)
    # run.threads auto then sizes every thread pool to the worker's share (rlgen.cpu_threads reads this)
    os.environ["OMP_NUM_THREADS"] = str(len(cores))


def _core_slices(jobs: int) -> list[tuple[int, ...]]:
    """The usable cores split into ``jobs`` disjoint groups (one per worker); [] where affinity is unknown."""
    if jobs <= 1 or not hasattr(os, "sched_getaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < jobs:
        return []
    per = len(cores) // jobs
    return [tuple(cores[k * per:(k + 1) * per]) for k in range(jobs)]


def _in_workers(fn: Callable[..., Any], jobs: dict[Any, Any], slices: list[tuple[int, ...]],
                echo: Callable[[str], None], labels: dict[Any, str] | str, progress: bool = False) -> dict[Any, Any]:
    """``fn(job)`` for every job, here one after another, or with ``slices`` in that many pinned worker processes."""
    name = (lambda key: labels[key]) if isinstance(labels, dict) else (lambda key: f"{labels} {key}")
    results: dict[Any, Any] = {}
    if not slices:
        for key, job in jobs.items():
            echo(f"\n== {name(key)}")
            results[key] = fn(job, progress)
        return results
    echo(f"\n== {len(jobs)} runs, {len(slices)} at a time on cores {', '.join(map(str, slices))}")
    # spawn, not fork: a forked torch with its thread pools already started can deadlock
    context = multiprocessing.get_context("spawn")
    core_slices = context.SimpleQueue()
    for cores in slices:
        core_slices.put(cores)
    t_start = time.perf_counter()
    with ProcessPoolExecutor(len(slices), mp_context=context, initializer=_pin_worker,
                             initargs=(core_slices,)) as pool:
        futures = {pool.submit(fn, job): key for key, job in jobs.items()}
        for future in as_completed(futures):
            key = futures[future]
            results[key] = future.result()
            echo(f"finished {name(key)} at {time.perf_counter() - t_start:.0f} s")
    return results


def run_ablation(out: str | Path = "runs/ablation", *, steps: int | None = None, quick: bool = False,
                 model: str | None = None, eval_contexts: int | None = None, configs: Sequence[str] = NAMES,
                 schedule: Schedule | None = None, seed: int = 0, seeds: int = 1, jobs: int = 1, progress: bool = True,
                 echo: Callable[[str], None] = print) -> Path:
    """Train and evaluate each configuration into ``out/<name>/`` (``out/<name>/seed-<s>/`` with several
    seeds); returns ``out/ablation.md``.

    ``seed``: the data, CTCVR model and evaluation sampling seed, and the first training seed; ``seeds``: how many
    training seeds (``seed``, ``seed + 1``, ...) each configuration is trained at; ``jobs``: runs trained at once,
    each in its own process pinned to its share of the cores (on 2 cores, 2 one-thread runs finish a multi-run
    ablation about a third sooner than one two-thread run at a time: a small model's step does not scale to 2
    threads). Each run is seeded the same either way; float sums on a different thread count round differently,
    so ``jobs`` can change the last digits of a run.
    """
    schedule = (schedule or (QUICK if quick else FULL)).replace_given(steps=steps, eval_contexts=eval_contexts, model=model)
    unknown = [c for c in configs if c not in TABLE_2]
    if unknown:
        raise ConfigError(f"ablation: unknown configurations {unknown}; choose from {', '.join(NAMES)}")
    if seeds < 1:
        raise ConfigError(f"ablation: --seeds must be at least 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"ablation: --jobs must be at least 1, got {jobs}")
    train_seeds = [seed + k for k in range(seeds)]
    out = Path(out)
    for name in (*configs, "base"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    echo(f"ablation of {', '.join(LABELS[c] for c in configs)} into {out}: {schedule.describe()}"
         + (f"; training seeds {', '.join(str(s) for s in train_seeds)}" if seeds > 1 else ""))
    t0 = time.perf_counter()
    shared = out / "shared"
    ctcvr_dir = shared / "ctcvr"
    data = write_data(shared, schedule.eval_contexts)
    if (ctcvr_dir / "config.json").exists():
        echo(f"reusing the CTCVR model in {ctcvr_dir}")
    else:
        echo(f"simulating impression logs on {schedule.log_contexts} contexts and training the CTCVR model")
        logs = write_impression_logs(shared, data["train"], schedule.log_contexts, schedule.impressions_per_context)
        train_ctcvr_model(logs["path"], ctcvr_dir, schedule.ctcvr_epochs, seed=seed, progress=progress)

    def folder(name: str, train_seed: int) -> Path:
        return out / name if seeds == 1 else out / name / f"seed-{train_seed}"

    def config_for(name: str, train_seed: int = seed) -> dict[str, Any]:
        return build_config(schedule, ctcvr_model=ctcvr_dir, train_path=data["train"], eval_path=data["eval_contexts"],
                            output_dir=folder(name, train_seed) / "run", preset_name=name, seed=train_seed)

    full = config_for("relate")  # every policy is evaluated with all seven rewards, at the sampling seed ``seed``
    echo("evaluating the base policy")
    base = evaluate_policy(full, None, out / "base" / "eval", progress=progress)
    rows = {"base": table3_row(base.summary)}
    per_seed: dict[str, list[dict[str, torch.Tensor]]] = {"base": [table3_contexts(base)]}
    curves: dict[str, list[list[dict[str, float]]]] = {}
    runs = [(name, train_seed) for name in configs for train_seed in train_seeds]
    labels = {run: f"{LABELS[run[0]]}{f' (training seed {run[1]})' if seeds > 1 else ''}" for run in runs}
    slices = _core_slices(min(jobs, len(runs)))
    # the paper's Table 2 models all start from one cold-start model: here one warm start per training seed, made
    # with the RELATE config (its rewards choose the kept samples), and every configuration starts from it
    starts: dict[int, str] = {}
    if full.get("warm_start", {}).get("prompts"):
        echo(f"warm start at training seed{'s' if seeds > 1 else ''} {', '.join(map(str, train_seeds))}: "
             "fine-tuning on the base's accepted samples, the start of every configuration")
        warm = {s: (config_for("relate", s), full, folder("warm_start", s) / "eval", out / "base" / "eval")
                for s in train_seeds}
        for s in train_seeds:
            warm[s][0]["run"]["output_dir"] = str(folder("warm_start", s) / "run")
        done = _in_workers(_warm_start, warm, slices, echo, "warm start, training seed", progress=progress)
        starts = {s: done[s][0] for s in train_seeds}
        per_seed["warm_start"] = [done[s][2] for s in train_seeds]
        rows["warm_start"] = {k: _mean([done[s][1][k] for s in train_seeds]) for k in done[train_seeds[0]][1]}

    def train_raw(name: str, s: int) -> dict[str, Any]:
        raw = with_monitors(config_for(name, s), full)
        return from_warm_start(raw, starts[s]) if starts else raw

    work = [_Job(train_raw(name, s), full, folder(name, s) / "eval", out / "base" / "eval") for name, s in runs]
    for name in configs:
        echo(f"{LABELS[name]}: {', '.join(r['name'] for r in config_for(name)['rewards'])}; credit assignment "
             f"{'on' if TABLE_2[name][1] else 'off (token rewards demoted to sentence level)'}")
    results = _in_workers(_train_and_evaluate, dict(zip(runs, work)), slices, echo, labels, progress=progress)
    for name in configs:
        seed_rows = []
        for train_seed in train_seeds:
            row, contexts, curve = results[(name, train_seed)]
            seed_rows.append(row)
            per_seed.setdefault(name, []).append(contexts)
            curves.setdefault(name, []).append(curve)
        # every seed is scored on the same contexts, so the mean of the seeds' means is the mean over both
        rows[name] = {k: sum(r[k] for r in seed_rows) / len(seed_rows) for k in seed_rows[0]}
    stats = seed_statistics(per_seed, seed=seed)
    info = {"schedule": dataclasses.asdict(schedule), "seed": seed, "seeds": train_seeds, "jobs": max(1, len(slices)),
            "seconds": round(time.perf_counter() - t0, 1), "configs": list(configs)}
    path = write_ablation_report(out, rows, curves if seeds > 1 else {n: c[0] for n, c in curves.items()},
                                 schedule.steps, info, stats)
    echo(f"\n{(out / 'table3.md').read_text()}\nreport: {path}")
    return path


def _cmd_ablation(args: argparse.Namespace) -> int:
    configs = args.configs.split(",") if args.configs else list(NAMES)
    run_ablation(args.out, steps=args.steps, quick=args.quick, model=args.model, eval_contexts=args.eval_contexts,
                 configs=configs, seed=args.seed, seeds=args.seeds, jobs=args.jobs, progress=not args.no_progress)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablation", help="train Models 1-4 and RELATE (paper Table 2) alike; Table 3 and Figure 3 analogues",
        description="Train every Table 2 configuration with the same seed and steps, evaluate each with the full "
                    "reward set, and write table3.md, figure3.png and ablation.md (with where our ordering "
                    "disagrees with the paper's).",
    )
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="output folder (default: runs/ablation)")
    p.add_argument("--steps", type=int, help=f"training steps per configuration (default {FULL.steps}; --quick {QUICK.steps})")
    p.add_argument("--quick", action="store_true", help=f"the quick schedule on {QUICK.model} (plumbing, not learning)")
    p.add_argument("--model", help="policy model (default: the schedule's)")
    p.add_argument("--eval-contexts", type=int, help="eval contexts per configuration (default: the schedule's)")
    p.add_argument("--configs", help=f"comma-separated subset of {','.join(NAMES)} (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed shared by every configuration (data, CTCVR model, "
                   "evaluation sampling; the first training seed)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per configuration (run.seed = seed, seed+1, ...): "
                   "means and 95%% CIs over seeds and contexts, paired differences between configurations")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process pinned to its "
                   "share of the cores (default 1; on 2 cores, --jobs 2 finishes several runs about a third sooner)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_ablation)
