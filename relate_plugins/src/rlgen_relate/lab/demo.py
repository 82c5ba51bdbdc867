"""`rlgen-relate demo`: the whole RELATE pipeline on one CPU machine, from nothing to ``report.md``.

What a team does first with rlgen: (a) write the bundled search-ad contexts, (b) let the simulator serve a
diverse pool of candidate ads and log impressions, (c) train the CTCVR reward model on those logs, (d) evaluate
the base policy on held-out contexts, (e) train it with the RELATE preset (all seven rewards, ``relate.credit``,
``relate.grpo``, G = 8), (f) evaluate the trained policy against the base, and (g) write plots, sample ads and a
report. Every stage calls the same code as its own command (``rlgen-relate ctcvr train``, ``rlgen train``,
``rlgen eval``), in-process; the stages' sizes are a :class:`Schedule` (``FULL``, ``QUICK`` and ``GPU`` are shipped).

The reward model sees only the simulator's logs, never its internals, so the report's gap between predicted
and simulator CTCVR is an honest reward-hacking indicator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rlgen import ConfigError, load_config, make_warm_start

from . import report as rep

#: context fields the CTCVR model embeds next to the ad text. The landing page holds every selling point, so
#: the model sees them without a list-valued field (log rows and prompt metadata keep ``selling_points`` a list).
CTCVR_CONTEXT_FIELDS = ("query", "bid_word", "landing_page")
#: what the demo folder holds; a re-run replaces exactly these
OWNED = ("data", "logs", "ctcvr", "run", "eval", "plots", "report.md", "demo.json", "ads_before_after.jsonl")
#: seconds kept for writing plots and report.md when --time-limit-s bounds the demo
REPORT_RESERVE_S = 20.0
#: the stages of a demo whose preset has a warm start (7 without: no warm start and no evaluation of it)
STAGES = 9


@dataclass(frozen=True)
class Schedule:
    """Sizes of the demo's stages; ``overrides`` are ``--set``-style assignments over presets/relate.yaml."""

    name: str
    model: str
    log_contexts: int  # train contexts the simulator serves to build the CTCVR logs
    impressions_per_context: int
    ctcvr_epochs: int
    steps: int
    eval_contexts: int
    samples_per_context: int
    overrides: tuple[str, ...] = ()
    expected: str = ""  # told to the user before anything runs

    def replace_given(self, **changes: Any) -> "Schedule":
        """A copy with the given fields replaced; unset ones (None, 0, "") keep the schedule's value (CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v})

    def describe(self) -> str:
        return (f"policy {self.model}; logs from {self.log_contexts} contexts; CTCVR up to {self.ctcvr_epochs} epochs; "
                f"{self.steps} RELATE steps; eval on {self.eval_contexts} contexts x {self.samples_per_context}")


# The full demo: SmolLM2-135M-Instruct with the preset as shipped (LoRA, see presets/relate.yaml).
FULL = Schedule(
    name="full",
    model="builtin:smollm2-135m-instruct",
    log_contexts=300,
    impressions_per_context=2000,
    ctcvr_epochs=30,
    # 24 steps of 3 prompts x G = 8 (chosen from 6 sampled) after the preset's two warm-start rounds: from the warm
    # start RL reaches its plateau within 16-24 steps, where from the base it took about 40 (docs/demo.md, rounds
    # nine and fourteen); a step takes about 18 s here
    steps=24,
    eval_contexts=128,  # of 139: at 64 the compliance and format CIs nearly touched zero
    samples_per_context=1,
    expected="about 22 minutes on 2 idle CPU cores (35 on a slower machine): logs and CTCVR model 1-2 min, base eval "
             "1-2 min, warm start (two rounds) 11-18 min and its eval 1 min, 24 RELATE steps of 18-30 s, trained eval 1 min",
)

# --quick: the same pipeline on the tiny random Llama, to see every stage and file in a few minutes. A random
# 2-layer model cannot learn to write ads in a few steps: its numbers show the plumbing, not RELATE.
QUICK = Schedule(
    name="quick",
    model="builtin:tiny-llama",
    log_contexts=60,
    impressions_per_context=2000,
    ctcvr_epochs=10,
    steps=8,
    eval_contexts=16,
    samples_per_context=1,
    # a random model writes no ad that passes review: its warm start accepts every sample, to show the stage
    overrides=("trainer.params.lora=null", "trainer.params.learning_rate=1.0e-3", "sampler.params.max_new_tokens=32",
               "warm_start.prompts=8", "warm_start.samples_per_prompt=2", "warm_start.accept={}",
               "warm_start.keep_per_prompt=1", "warm_start.epochs=1", "warm_start.batch_size=8"),
    expected="about 2-4 minutes on 2 CPU cores (tiny random Llama: the numbers show the plumbing, not learning)",
)

# --schedule gpu: the full demo's pipeline at GPU scale (issue 15): 160 steps of 8 prompts x G=5 with the KL term
# on, bf16 where the GPU supports it (model.dtype auto) and the CTCVR reward on the GPU (its device auto). Its
# sampler generates 40 tokens for each of the 40 rows at once, where a CPU pays per row.
GPU = Schedule(
    name="gpu",
    model="builtin:smollm2-135m-instruct",
    log_contexts=300,
    impressions_per_context=2000,
    ctcvr_epochs=30,
    steps=160,
    eval_contexts=128,
    samples_per_context=1,
    # a GPU decode step of SmolLM2 is bound by kernel launches (24 ms for 40 rows on the H100, docs/gpu.md), so more
    # rows per call cost little: the warm start and the evals sample 32 contexts per call instead of 8
    overrides=("model.dtype=auto", "data.prompts_per_step=8", "group_size=5", "trainer.params.beta=0.04",
               "trainer.params.micro_batch_size=40", "eval.batch_prompts=32", "warm_start.batch_prompts=32"),
    expected="not measured end to end on a GPU yet (docs/gpu.md); pass --time-limit-s to bound it",
)

SCHEDULES = {s.name: s for s in (FULL, QUICK, GPU)}


def per_step(raw: dict[str, Any]) -> str:
    """What one training step learns from, as the stage line and the report say it."""
    data, g = raw["data"], raw["group_size"]
    trained = f"{data['prompts_per_step']} prompts x G = {g}"
    oversample = data.get("oversample", 1)
    if oversample > 1:
        return (f"{trained} kept from {data['prompts_per_step'] * oversample} sampled by reward spread "
                f"(data.oversample {oversample}, rank: {data.get('oversample_rank', 'total')})")
    return trained


def _echo(msg: str) -> None:
    print(msg, flush=True)


@contextmanager
def _stage(record: dict[str, Any], n: int, key: str, title: str, echo: Callable[[str], None],
           total: int = STAGES) -> Iterator[None]:
    echo(f"\n[{n}/{total}] {title}")
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    record.setdefault("seconds", {})[key] = round(seconds, 1)
    echo(f"      done in {seconds:.0f} s")


def spread(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` records evenly spaced over ``records`` (the files are grouped by vertical: this spans them)."""
    if n >= len(records):
        return list(records)
    return [records[(i * len(records)) // n] for i in range(n)]


def cache_dir() -> Path:
    return Path(os.environ.get("RLGEN_CACHE_DIR", "~/.cache/rlgen")).expanduser()


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# -- stages, each usable on its own (the ablation reuses them) ----------------------------------------------


def write_data(out: Path, eval_contexts: int, seed: int = 0) -> dict[str, Any]:
    """(a) the bundled contexts as train.jsonl / eval.jsonl, plus the spread of eval contexts the demo scores."""
    from rlgen import read_records

    from ..searchads import write_dataset

    paths = write_dataset(out / "data", seed=seed)
    train, evals = read_records(paths["train"]), read_records(paths["eval"])
    subset = _write_jsonl(out / "data" / "eval_contexts.jsonl", spread(evals, eval_contexts))
    return {"train": str(paths["train"]), "eval": str(paths["eval"]), "eval_contexts": str(subset),
            "train_rows": len(train), "eval_rows": len(evals), "eval_used": min(eval_contexts, len(evals)),
            "verticals": len({r["vertical"] for r in train})}


def write_impression_logs(out: Path, train_path: str | Path, n_contexts: int, impressions: int, seed: int = 0) -> dict[str, Any]:
    """(b) the simulator serves its candidate pool on ``n_contexts`` train contexts and logs what happened."""
    from rlgen import read_records

    from .simulator import write_logs

    contexts = spread(read_records(train_path), n_contexts)
    summary = write_logs(out / "logs" / "impressions.jsonl", contexts, seed=seed, impressions_per_context=impressions)
    return summary.as_dict()


def train_ctcvr_model(logs: str | Path, out_dir: Path, epochs: int, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """(c) the ESMM reward model on the logs, through the ctcvr package's own training function."""
    import torch

    from ..ctcvr.data import LogFields, read_logs
    from ..ctcvr.train import TrainConfig, format_report, save_training, train

    fields = LogFields(text="ad_text", context=list(CTCVR_CONTEXT_FIELDS), group="context_id")
    table = read_logs([Path(logs)], fields)
    cfg = TrainConfig(epochs=epochs, seed=seed, progress=progress, cache_dir=str(cache_dir() / "ctcvr"))
    # one thread, as the ctcvr CLI's default: MiniLM's embeddings round differently on two threads, and the reward
    # model trained on them moved a fresh clone's demo from 82.8% to 69.5% compliance (docs/demo.md, round five)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, result = train(table, None, fields, cfg)
    finally:
        torch.set_num_threads(threads)
    save_training(model, result, out_dir)
    val = result["val"]
    return {
        "model": str(out_dir),
        "rows": len(table),
        "report": format_report(result),
        "val_ctr_auc": val["ctr"]["auc"],
        "val_ctcvr_auc": val.get("ctcvr", {}).get("auc"),
        "val_ctcvr_calibration": val.get("ctcvr", {}).get("calibration_ratio"),
    }


def build_config(schedule: Schedule, *, ctcvr_model: str | Path, train_path: str | Path, eval_path: str | Path,
                 output_dir: Path, preset_name: str = "relate", seed: int = 0) -> dict[str, Any]:
    """The raw run config: a shipped preset, pointed at the demo's files, with the schedule's overrides."""
    from rlgen import apply_override

    from ..presets import preset

    raw = preset(preset_name, ctcvr_model=str(ctcvr_model))
    raw["model"]["path"] = schedule.model
    raw["data"]["path"] = str(train_path)
    raw["data"].pop("split", None)
    # 16 prompts per generate call: on a CPU, decoding costs per call, so fewer calls are faster
    raw["eval"] = {**raw.get("eval", {}), "data": str(eval_path), "limit": None, "batch_prompts": 16,
                   "samples_per_context": schedule.samples_per_context, "every": 0}
    raw["run"].update({"steps": schedule.steps, "seed": seed, "output_dir": str(output_dir), "checkpoint_every": 0})
    for assignment in schedule.overrides:
        apply_override(raw, assignment, origin=f"schedule {schedule.name}")
    return raw


def evaluate_policy(raw: dict[str, Any], policy: str | None, out_dir: Path, baseline: Path | None = None,
                    progress: bool = True) -> Any:
    """(d)/(f) ``rlgen eval`` in-process: generate on the eval contexts, score every metric, compare."""
    import rlgen

    result = rlgen.evaluate_policy(rlgen.load_config(raw), policy=policy, output_dir=out_dir, progress=progress,
                                   baseline=rlgen.load_evaluation(baseline) if baseline else None)
    rlgen.write_evaluation(result, out_dir)
    return result


def train_policy(raw: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """(e) ``rlgen train`` in-process; returns the run folder and its last metrics."""
    from rlgen import load_config
    from rlgen import train

    result = train(load_config(raw), progress=progress)
    return {"output_dir": str(result.output_dir), "steps": result.last_step,
            "policy": str(Path(result.output_dir) / "policy")}


def _prepare_folder(out: Path) -> None:
    """Refuse a folder that is not a demo's; in a previous demo's folder, replace what the demo owns."""
    if out.exists() and any(out.iterdir()):
        if not (out / "demo.json").exists():
            raise ConfigError(f"{out} exists and is not a demo folder (no demo.json); choose another --out")
        for name in OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    # written first, so an interrupted demo's folder is still recognised as one
    rep.write_json(out / "demo.json", {"status": "running"})


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, model: str | None = None,
             schedule: Schedule | None = None, seed: int = 0, progress: bool = True,
             echo: Callable[[str], None] = _echo, time_limit_s: float | None = None) -> dict[str, Any]:
    """Run every stage into ``out`` and write ``report.md``; returns the record also saved as ``demo.json``.

    ``time_limit_s`` bounds the whole demo's wall time: training gets what the stages before it left, less
    a reserve for the trained eval and the report, as ``run.time_limit_s`` (it stops between steps).
    """
    schedule = (schedule or (QUICK if quick else FULL)).replace_given(model=model)
    out = Path(out)
    _prepare_folder(out)
    record: dict[str, Any] = {"status": "running", "schedule": dataclasses.asdict(schedule), "seed": seed,
                              "out": str(out)}
    # a warm start in the preset adds two stages: making it and evaluating it
    warm = build_config(schedule, ctcvr_model=out / "ctcvr", train_path="", eval_path="", output_dir=out / "run",
                        seed=seed).get("warm_start", {})
    total = STAGES if warm.get("prompts") else STAGES - 2
    counter = iter(range(1, total + 1))
    echo(f"RELATE demo ({schedule.name}) into {out}\n"
         f"  {schedule.describe()}\n"
         f"  expected: {schedule.expected or 'not measured for this schedule'}\n"
         "  stages: data -> simulator logs -> CTCVR model -> base eval -> "
         f"{'warm start -> warm-start eval -> ' if warm.get('prompts') else ''}RELATE training -> trained eval -> report")
    t_start = time.perf_counter()

    def stage(key: str, title: str) -> Any:
        return _stage(record, next(counter), key, title, echo, total)

    with stage("data", "writing the search-ad contexts (builtin:search-ads generator)"):
        record["data"] = data = write_data(out, schedule.eval_contexts, seed=0)
        echo(f"      {data['train_rows']} train and {data['eval_rows']} eval contexts in {data['verticals']} verticals")

    with stage("logs", f"simulating impressions of a diverse candidate pool on {schedule.log_contexts} contexts"):
        record["logs"] = logs = write_impression_logs(out, data["train"], schedule.log_contexts,
                                                      schedule.impressions_per_context, seed=0)
        echo(f"      {logs['rows']} ads shown ({logs['ads_rejected']} rejected by review), {logs['impressions']:,} "
             f"impressions, CTR {logs['ctr']:.2%}, CVR {logs['cvr']:.2%}")

    with stage("ctcvr", "training the CTCVR reward model (ESMM on frozen MiniLM embeddings)"):
        record["ctcvr"] = ctcvr = train_ctcvr_model(logs["path"], out / "ctcvr", schedule.ctcvr_epochs, seed=seed,
                                                    progress=progress)
        echo("      " + ctcvr["report"].replace("\n", "\n      "))

    raw = build_config(schedule, ctcvr_model=out / "ctcvr", train_path=data["train"],
                       eval_path=data["eval_contexts"], output_dir=out / "run", seed=seed)
    record["config"] = raw

    with stage("eval_base", f"evaluating the base policy on {data['eval_used']} eval contexts"):
        base = evaluate_policy(raw, None, out / "eval" / "base", progress=progress)

    if warm.get("prompts"):
        rounds = warm.get("rounds", 1)
        with stage("warm_start", f"warm start: {warm.get('samples_per_prompt')} ads for each of {warm['prompts']} train "
                   "contexts, fine-tuning on those the rewards accept"
                   + (f"; {rounds} rounds, each sampling with the last one's policy" if rounds > 1 else "")):
            policy = make_warm_start(load_config(raw), progress=progress)
            summary = json.loads((policy.parent / "summary.json").read_text(encoding="utf-8"))
            record["warm_start"] = {k: v for k, v in summary.items() if k != "fingerprint"}
            echo(f"      {summary['accepted']} of {summary['sampled']} ads accepted; fine-tuned on {summary['kept']} "
                 f"in {summary['updates']} updates")
        with stage("eval_warm_start", "evaluating the warm-start policy against the base"):
            evaluate_policy(raw, str(policy), out / "eval" / "warm_start", baseline=out / "eval" / "base",
                            progress=progress)

    if time_limit_s is not None:
        # what is left after training: the trained eval, as long as the slowest eval so far, and the report
        reserve = 1.5 * max(v for k, v in record["seconds"].items() if k.startswith("eval_")) + REPORT_RESERVE_S
        raw["run"]["time_limit_s"] = max(time_limit_s - (time.perf_counter() - t_start) - reserve, 1.0)
        echo(f"      --time-limit-s {time_limit_s:g}: training gets {raw['run']['time_limit_s']:.0f} s, "
             f"{reserve:.0f} s are kept for the trained eval and the report")
    with stage("train", f"training with RELATE for {schedule.steps} steps, each on {per_step(raw)}"):
        record["train"] = run = train_policy(raw, progress=progress)
        if run["steps"] < schedule.steps:
            echo(f"      stopped by the time limit after {run['steps']} of {schedule.steps} steps")

    with stage("eval_trained", "evaluating the trained policy against the base"):
        trained = evaluate_policy(raw, run["policy"], out / "eval" / "trained", baseline=out / "eval" / "base",
                                  progress=progress)

    with stage("report", "writing plots, sample ads and report.md"):
        record["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
        record["verdict"] = verdicts(base, trained)
        record["status"] = "done"
        rep.write_json(out / "demo.json", record)
        write_demo_report(out)
    echo(f"\n{headline(record)}\nreport: {out / 'report.md'}")
    return record


# -- the verdict and the report -----------------------------------------------------------------------------

#: what the trained policy has to beat the base on (issue 9)
TARGETS = [("relate/compliance_rate", "compliance rate"), ("relate/format_pass_rate", "format pass rate"),
           ("relate/sim_ctcvr", "simulator CTCVR")]


def verdicts(base: Any, trained: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for key, label in TARGETS:
        diff = rep.paired_difference(base, trained, key)
        if diff is None:
            continue
        out[key] = {"label": label, "base": base.summary[key]["mean"], "trained": trained.summary[key]["mean"],
                    **diff, "verdict": rep.verdict(diff, True).strip("*")}
    return out


def headline(record: dict[str, Any]) -> str:
    parts = []
    for v in record.get("verdict", {}).values():
        pct = v["label"].endswith("CTCVR")
        fmt = (lambda x: f"{x:.3%}") if pct else (lambda x: f"{x:.1%}")
        parts.append(f"{v['label']} {fmt(v['base'])} -> {fmt(v['trained'])} ({v['verdict']})")
    return "trained vs base: " + "; ".join(parts) if parts else "no verdict"


def write_demo_report(out: str | Path) -> Path:
    """``report.md``, ``plots/*.png`` and ``ads_before_after.jsonl`` from a finished demo folder."""
    out = Path(out)
    record = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    rows = rep.read_metrics(out / "run" / "metrics.jsonl")
    base, trained = rep.load_eval(out / "eval" / "base"), rep.load_eval(out / "eval" / "trained")
    rep.plot_reward_curves(rows, out / "plots" / "rewards.png", title=f"RELATE rewards over {len(rows)} steps")
    rep.plot_training(rows, out / "plots" / "training.png")
    _write_jsonl(out / "ads_before_after.jsonl", [
        {"context": base.meta[i], "base": base.texts[i], "trained": trained.texts[i]}
        for i in range(min(len(base.texts), len(trained.texts)))
    ])
    s, cfg = record["schedule"], record["config"]
    trained_steps = record.get("train", {}).get("steps", s["steps"])
    steps_done = (str(trained_steps) if trained_steps >= s["steps"] else
                  f"{trained_steps} (of {s['steps']} planned: stopped by the time limit, "
                  f"{cfg['run'].get('time_limit_s', 0):.0f} s)")
    rewards = ", ".join(f"{r['name']} (w={r.get('weight', 1.0):g})" for r in cfg["rewards"])
    trainer = cfg["trainer"]["params"]
    secs = record.get("seconds", {})
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in secs.items() if k != "total")
    ctcvr = record["ctcvr"]
    logs = record["logs"]
    v_lines = []
    for v in record.get("verdict", {}).values():
        digits = 3 if v["label"].endswith("CTCVR") else 1
        v_lines.append(f"- {v['label']}: {v['base']:.{digits}%} -> {v['trained']:.{digits}%}, difference "
                       f"{v['diff'] * 100:+.{digits}f} pp [95% CI {v['ci_low'] * 100:+.{digits}f}, "
                       f"{v['ci_high'] * 100:+.{digits}f}]: **{v['verdict']}**")
    warm_item, warm_section = "", ""
    ws = record.get("warm_start")
    if ws and (out / "eval" / "warm_start" / "eval.json").exists():
        warm_eval = rep.load_eval(out / "eval" / "warm_start")
        gate = cfg.get("warm_start", {}).get("accept", {})
        passed = ', '.join(f'{k} >= {v:g}' for k, v in gate.items()) or 'the gate'
        rounds = ws.get("rounds", [])
        if len(rounds) > 1:
            per_round = "; ".join(f"round {r['round']}: {r['accepted']} of {r['sampled']} passed, {r['kept']} kept"
                                  for r in rounds)
            warm_item = (f"\n   It started from the **warm start** (`run/warm_start/`), {len(rounds)} rounds: the base, "
                         f"then each round's fine-tuned policy, wrote {ws['sampled'] // max(ws['contexts'], 1)} ads for "
                         f"each of {ws['contexts'] // len(rounds)} new train contexts, and the policy was fine-tuned on "
                         f"the best of those that passed {passed} ({per_round}; {ws['updates']} updates in all).")
        else:
            warm_item = (f"\n   It started from the **warm start** (`run/warm_start/`): the base wrote "
                         f"{ws['sampled'] // max(ws['contexts'], 1)} ads for each of {ws['contexts']} train contexts, "
                         f"{ws['accepted']} passed {passed}, and the base was fine-tuned on the {ws['kept']} best of them "
                         f"({ws['updates']} updates).")
        warm_section = f"""## Base, warm start, trained

The warm start is supervised fine-tuning on the policy's own accepted ads (docs/warm-start.md); RL started from it
and its KL term keeps the policy near it. Each column: mean (difference from the base [paired 95% CI], verdict
when the CI excludes zero). The same contexts and sampling seeds for all three (`eval/warm_start/`).

{rep.stages_table(base, {"warm start": warm_eval, "trained": trained})}
"""
    beat = all(v["verdict"] == "better" for v in record.get("verdict", {}).values()) and record.get("verdict")
    conclusion = ("The trained policy beats the base on all three targets, each with a 95% confidence interval "
                  "of the difference above zero." if beat else
                  "The trained policy does **not** beat the base on all three targets with confidence in this run; "
                  "see the rows above (a longer schedule or more eval contexts may be needed).")
    text = f"""# RELATE demo report

Schedule **{s['name']}**: {Schedule(**{**s, 'overrides': tuple(s['overrides'])}).describe()}; seed {record['seed']}.
Wall time {secs.get('total', 0) / 60:.1f} min ({timing}).

## What was run

1. **Data**: {record['data']['train_rows']} train and {record['data']['eval_rows']} eval search-ad contexts in
   {record['data']['verticals']} verticals (`data/`); evaluation uses {record['data']['eval_used']} eval contexts spread over
   the verticals (`data/eval_contexts.jsonl`).
2. **Simulator logs**: the simulator served its pool of candidate ads (good, vague, hyped, risky, off-topic, ...) on
   {logs['contexts']} train contexts: {logs['rows']} ads shown, {logs['ads_rejected']} rejected by review,
   {logs['impressions']:,} impressions, CTR {logs['ctr']:.2%}, CVR {logs['cvr']:.2%} (`logs/impressions.jsonl`).
3. **CTCVR reward model** (`ctcvr/`): ESMM on frozen MiniLM embeddings of the ad and of
   {', '.join(CTCVR_CONTEXT_FIELDS)}, trained on the logs only. Validation (held-out contexts):

```text
{ctcvr['report']}
```

4. **Base evaluation** of `{s['model']}` (`eval/base/`).
5. **RELATE training** (`run/`): {steps_done} steps, each on {per_step(cfg)};
   rewards {rewards}; advantage `{cfg['advantage']['name']}` {cfg['advantage'].get('params', {})};
   trainer `{cfg['trainer']['name']}` (lr {trainer.get('learning_rate')}, beta {trainer.get('beta')},
   LoRA {trainer.get('lora') or 'off'}); sampler `{cfg['sampler']['name']}` {cfg['sampler'].get('params', {})}.
   Run folder: `run/config.yaml`, `run/metrics.jsonl`, `run/samples.jsonl`, `run/checkpoints/`, `run/policy/`.{warm_item}
6. **Trained evaluation** against the base on the same contexts and sampling seeds (`eval/trained/`).

## Does the trained policy beat the base?

{chr(10).join(v_lines)}

{conclusion}

## Evaluation: base vs trained

Means over contexts with 95% bootstrap confidence intervals; the relative delta is Eq. 10 with a paired bootstrap
CI, and the verdict rests on the paired CI of the absolute difference.

{rep.comparison_table(base, trained)}
{warm_section}## Compliance by vertical

Compliance rate (Eq. 11) over the ads of each vertical, with the paired 95% CI of the difference (the same
contexts resampled for both policies).

{rep.vertical_compliance_section(base, trained)}
## Predicted vs simulator CTCVR (reward-hacking indicator)

Predicted CTCVR is the reward model's pCTR x pCVR of each ad; simulator CTCVR is the simulated users' true
p_click x p_conv (0 for an ad that review rejects, fatigue for near-duplicates). The reward model never saw the
simulator's internals, only its logs, so what it predicts and what users do can drift apart.

{rep.ctcvr_gap_section(base, trained)}
## Training curves

![rewards](plots/rewards.png)

![training](plots/training.png)

## Sample ads, before and after

The same eval contexts and sampling seeds; every pair is in `ads_before_after.jsonl`.

{rep.sample_ads_section(base, trained)}
"""
    path = out / "report.md"
    path.write_text(text, encoding="utf-8")
    return path


# -- command line -------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.quick and args.schedule not in (None, "quick"):
        raise SystemExit(f"rlgen-relate demo: --quick and --schedule {args.schedule} ask for two schedules; give one")
    base = SCHEDULES[args.schedule] if args.schedule else (QUICK if args.quick else FULL)
    schedule = base.replace_given(steps=args.steps, eval_contexts=args.eval_contexts)
    record = run_demo(args.out, model=args.model, schedule=schedule, seed=args.seed, progress=not args.no_progress,
                      time_limit_s=args.time_limit_s)
    return 0 if record.get("status") == "done" else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole RELATE pipeline: data, simulator logs, CTCVR model, eval, training, report",
        description="Write the search-ad data, simulate impression logs, train the CTCVR reward model, evaluate the "
                    "base policy, train it with the RELATE preset, evaluate it against the base, and write "
                    "report.md with plots and sample ads.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help=f"a few minutes on {QUICK.model} (plumbing, not learning)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES),
                   help="stage sizes: full (default), quick (= --quick), gpu (160 steps of 8 prompts x G=5, KL on, bf16; docs/gpu.md)")
    p.add_argument("--model", help=f"policy model (default: {FULL.model}; with --quick: {QUICK.model})")
    p.add_argument("--steps", type=int, help="RELATE training steps (default: the schedule's)")
    p.add_argument("--eval-contexts", type=int, help="eval contexts (default: the schedule's)")
    p.add_argument("--seed", type=int, default=0, help="run seed (training and evaluation sampling)")
    p.add_argument("--time-limit-s", type=float,
                   help="wall-clock limit of the whole demo: training stops between steps early enough to leave "
                        "time for the trained eval and the report (run.time_limit_s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
