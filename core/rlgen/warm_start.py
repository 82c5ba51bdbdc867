"""Warm start: supervised fine-tuning on the policy's own accepted samples, before RL.

The paper's RL starts from a cold-start initialisation; RL from a general model that writes an
acceptable completion half the time spends its few samples on the format. This stage makes the
start from the run's own parts (rejection sampling fine-tuning: RAFT, Dong et al. 2023; Llama 2's
rejection sampling):

1. the run's sampler draws ``warm_start.samples_per_prompt`` completions for ``warm_start.prompts``
   training contexts, at the run's temperature;
2. the run's rewards score them; a completion is accepted when every reward named in
   ``warm_start.accept`` reaches its minimum, and the ``keep_per_prompt`` accepted completions of a
   context with the highest weighted reward (Eq. 2) are kept;
3. the run's trainer fine-tunes on the kept completions: advantage 1 on each of their tokens, one
   optimizer update per batch. A policy-gradient step whose pi_old is the current policy has the
   gradient of the log-likelihood of the tokens it is given when every advantage is 1 (Eq. 6 with
   A = 1, rho = 1 and beta = 0), so the trainer plugin needs no second loss.

With ``warm_start.rounds`` > 1 the stage repeats (ReST's grow and improve steps, Gulcehre et al.
2023): round r samples the next ``prompts`` contexts of the shuffled order with round r-1's policy,
which accepts more of its own completions and on more contexts, and fine-tunes that policy further.

The last round's policy is exported (adapters merged) to ``RUN/warm_start/policy``; RL then loads it
as its model, so under LoRA its reference for the KL term is this policy, not the untouched base.
A finished warm start is reused when the run resumes or restarts with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import tqdm

from . import run_lock, session
from .config import RunConfig
from .discovery import Registry
from .errors import RlgenError
from .logs import get_logger
from .reward import check_reward_result
from .rollout import Rollout
from .seeding import seed_everything, step_seed

log = get_logger(__name__)

FOLDER = "warm_start"
POLICY = "policy"
SUMMARY = "summary.json"
#: offsets the sampling seeds of this stage away from the training steps' (loop.step_seed(seed, step))
SEED_OFFSET = 2_000_000
#: how far apart the sampling seeds of two rounds are (more generate calls than a round ever makes)
ROUND_SEED_STRIDE = 100_000


class WarmStartError(RlgenError):
    """The warm start could not produce fine-tuning data (nothing was accepted)."""


@dataclass
class Candidates:
    """What the sampling pass kept: the kept completions as one rollout, and the pass's counts."""

    kept: Rollout | None
    records: list[dict[str, Any]]  # one per kept completion: text, context, scores (kept.jsonl)
    sampled: int
    accepted: int
    passed: dict[str, int]  # per accept key: completions that reached its minimum
    total_mean_all: float
    total_mean_kept: float


def fingerprint(config: RunConfig) -> str:
    """What the warm start's result depends on; a stored policy is reused only under the same one."""
    parts = {
        # how many prompts RL samples a step is not the warm start's business (it picks its own contexts)
        "model": config.model.model_dump(mode="json"), "data": config.data.model_dump(mode="json", exclude={"oversample", "oversample_rank"}),
        "sampler": config.sampler.model_dump(mode="json"),
        "rewards": [r.model_dump(mode="json") for r in config.rewards],
        "trainer": config.trainer.model_dump(mode="json"), "warm_start": config.warm_start.model_dump(mode="json"),
        "seed": config.run.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def policy_dir(output_dir: Path) -> Path:
    return Path(output_dir) / FOLDER / POLICY


def finished(config: RunConfig) -> Path | None:
    """The stored warm-start policy of this run folder when it was made under ``config``'s settings."""
    folder = Path(config.run.output_dir) / FOLDER
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    policy = folder / POLICY
    return policy if summary.get("fingerprint") == fingerprint(config) and policy.is_dir() else None


def round_folder(folder: Path, round_index: int) -> Path:
    """Where round ``round_index`` writes kept.jsonl, metrics.jsonl and its policy: the stage's folder for round 1."""
    return folder if round_index == 1 else folder / f"round-{round_index}"


def round_contexts(records: list[Any], prompts: int, round_index: int) -> list[Any]:
    """Round r's contexts: the r-th block of ``prompts`` in the shuffled order, wrapping around at its end."""
    if prompts >= len(records):
        return list(records)
    start = (round_index - 1) * prompts % len(records)
    return (records[start:] + records[:start])[:prompts]


def sample_candidates(prepared: session.PreparedRun, folder: Path, progress: bool, round_index: int = 1) -> Candidates:
    """Step 1 and 2: sample, score, accept and keep (the sampler and rewards are closed on return)."""
    config, plan, registry = prepared.config, prepared.plan, prepared.registry
    warm = config.warm_start
    source = prepared.source
    records = source.shuffled_records()
    if warm.prompts > len(records) and round_index == 1:
        log.warning("warm_start.prompts exceeds the training contexts; using all", asked=warm.prompts,
                    contexts=len(records))
    records = round_contexts(records, warm.prompts, round_index)
    sampler = plan.sampler.build()
    rewards = session.build_rewards(plan)
    weights = session.reward_weights(plan)
    context = session.run_context(config, registry, folder)
    parts: list[Rollout] = []
    kept_records: list[dict[str, Any]] = []
    sampled = accepted = 0
    passed = dict.fromkeys(warm.accept, 0)
    total_sum = kept_sum = 0.0
    with session.plugins_set_up(context, [sampler, *rewards.values()]), \
            tqdm.tqdm(total=len(records), unit="ctx", desc=f"warm start: sample{_of_rounds(warm, round_index)}",
                      disable=not progress) as bar:
        for call, start in enumerate(range(0, len(records), warm.batch_prompts)):
            chunk = records[start : start + warm.batch_prompts]
            seed = step_seed(config.run.seed, SEED_OFFSET + ROUND_SEED_STRIDE * (round_index - 1) + call, 0)
            seed_everything(seed)
            rollout = sampler.generate([source.prompt(r) for r in chunk], warm.samples_per_prompt, seed)
            scores: dict[str, torch.Tensor] = {}
            for key, provider in rewards.items():
                res = check_reward_result(provider.score(rollout), plugin=provider.name,
                                          granularity=provider.granularity, rollout=rollout)
                scores[key] = res.to_sentence(rollout.completion_mask).float()
            total = sum(weights[k] * v for k, v in scores.items())  # Eq. 2, per completion
            ok = torch.ones(rollout.batch_size, dtype=torch.bool)
            for key, least in warm.accept.items():
                hit = scores[key] >= least
                passed[key] += int(hit.sum())
                ok &= hit
            rows: list[int] = []
            for g in rollout.group.unique().tolist():
                members = [i for i in (rollout.group == g).nonzero().flatten().tolist() if ok[i]]
                members.sort(key=lambda i: -float(total[i]))
                rows += members[: warm.keep_per_prompt]
            if rows:
                parts.append(replace(rollout.select(rows), logprobs=None))
                for i in rows:
                    kept_records.append({
                        "text": rollout.texts[i], "context": (rollout.meta or [{}] * rollout.batch_size)[i],
                        "total": round(float(total[i]), 6), **{k: round(float(v[i]), 6) for k, v in scores.items()},
                    })
                    kept_sum += float(total[i])
            sampled += rollout.batch_size
            accepted += int(ok.sum())
            total_sum += float(total.sum())
            bar.update(len(chunk))
            bar.set_postfix(accepted=f"{accepted}/{sampled}", refresh=False)
    return Candidates(
        kept=Rollout.concat(parts) if parts else None, records=kept_records, sampled=sampled, accepted=accepted,
        passed=passed, total_mean_all=total_sum / max(sampled, 1), total_mean_kept=kept_sum / max(len(kept_records), 1),
    )


def _of_rounds(warm: Any, round_index: int) -> str:
    return f" (round {round_index}/{warm.rounds})" if warm.rounds > 1 else ""


def fine_tune(prepared: session.PreparedRun, kept: Rollout, folder: Path, progress: bool,
              round_index: int = 1) -> list[dict[str, float]]:
    """Step 3: ``epochs`` passes over ``kept`` in shuffled batches; exports the merged policy to ``folder/policy``."""
    config, plan = prepared.config, prepared.plan
    warm = config.warm_start
    per_epoch = math.ceil(kept.batch_size / warm.batch_size)
    updates = per_epoch * warm.epochs
    # the trainer sizes its learning-rate schedule by run.steps: here, the warm start's updates
    staged = config.model_copy(update={"run": config.run.model_copy(update={"steps": updates})})
    context = session.run_context(staged, prepared.registry, folder)
    trainer = plan.warm_start_trainer.build()  # type: ignore[union-attr]
    history: list[dict[str, float]] = []
    generator = torch.Generator().manual_seed(step_seed(config.run.seed, SEED_OFFSET - round_index, 0))
    with session.plugins_set_up(context, [trainer]), (folder / "metrics.jsonl").open("w") as fh, \
            tqdm.tqdm(total=updates, unit="update", desc=f"warm start: fine-tune{_of_rounds(warm, round_index)}",
                      disable=not progress) as bar:
        update = 0
        for epoch in range(1, warm.epochs + 1):
            # contexts in a fresh order, each context's completions side by side: a trainer that shares a prompt
            # across the rows of a micro-batch (grpo's share_prompt) then computes each prompt once
            contexts = torch.randperm(int(kept.group.max()) + 1, generator=generator)
            order = torch.cat([(kept.group == g).nonzero().flatten() for g in contexts.tolist()])
            for start in range(0, kept.batch_size, warm.batch_size):
                batch = kept.select(order[start : start + warm.batch_size].tolist())
                metrics = trainer.step(batch, batch.completion_mask.float())  # A = 1 on every kept token
                update += 1
                row = {"update": update, "epoch": epoch, **{f"trainer/{k}": float(v) for k, v in metrics.items()}}
                history.append(row)
                fh.write(json.dumps(row) + "\n")
                fh.flush()  # a long fine-tune can be watched
                bar.update(1)
                bar.set_postfix(entropy=f"{metrics.get('entropy', float('nan')):.3f}", refresh=False)
        staging = folder / (POLICY + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        trainer.export_policy(staging)
        staging.rename(folder / POLICY)
    return history


def run_warm_start(prepared: session.PreparedRun, progress: bool = True) -> Path:
    """Make (or reuse) the warm-start policy of ``prepared``'s run; returns its folder."""
    config = prepared.config
    done = finished(config)
    if done is not None:
        log.info("warm start: reusing the stored policy", folder=str(done))
        return done
    folder = Path(config.run.output_dir) / FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    warm = config.warm_start
    torch.set_num_threads(session.cpu_threads(config))
    rounds: list[dict[str, Any]] = []
    current = prepared
    for round_index in range(1, warm.rounds + 1):
        here = round_folder(folder, round_index)
        here.mkdir(exist_ok=True)
        rounds.append(_one_round(current, here, round_index, progress))
        if round_index > 1:
            # the policy this round sampled from and fine-tuned is superseded: only the latest is kept
            shutil.rmtree(folder / POLICY)
            (here / POLICY).rename(folder / POLICY)
        if round_index < warm.rounds:
            current = session.prepare(session.with_model_path(config, folder / POLICY), prepared.registry)
    summary = {
        "fingerprint": fingerprint(config), "contexts": sum(r["contexts"] for r in rounds),
        **{k: sum(r[k] for r in rounds) for k in ("sampled", "accepted", "kept", "updates")},
        "passed": {k: sum(r["passed"][k] for r in rounds) for k in warm.accept},
        "reward_total_mean_sampled": rounds[-1]["reward_total_mean_sampled"],
        "reward_total_mean_kept": rounds[-1]["reward_total_mean_kept"],
        "entropy_first": rounds[0]["entropy_first"], "entropy_last": rounds[-1]["entropy_last"],
        **{k: round(sum(r[k] for r in rounds), 1) for k in ("sample_seconds", "fine_tune_seconds")},
        "rounds": rounds,
    }
    (folder / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("warm start: done", **{k: v for k, v in summary.items() if k not in ("fingerprint", "rounds")})
    return folder / POLICY


def _one_round(prepared: session.PreparedRun, folder: Path, round_index: int, progress: bool) -> dict[str, Any]:
    """Sample with ``prepared``'s model, keep, fine-tune it into ``folder/policy``; the round's summary."""
    config = prepared.config
    warm = config.warm_start
    t0 = time.perf_counter()
    log.info("warm start: sampling", round=round_index, model=config.model.path, contexts=warm.prompts,
             samples_per_context=warm.samples_per_prompt, accept=warm.accept)
    found = sample_candidates(prepared, folder, progress, round_index)
    with (folder / "kept.jsonl").open("w") as fh:
        for record in found.records:
            fh.write(json.dumps(record) + "\n")
    if found.kept is None:
        where = f" in round {round_index}" if round_index > 1 else ""
        raise WarmStartError(
            f"{config.origin}: warm_start.accept {warm.accept} accepted none of {found.sampled} completions{where} "
            f"(per key: {found.passed}); lower a minimum, sample more (warm_start.samples_per_prompt), or remove "
            "the warm_start section"
        )
    t1 = time.perf_counter()
    log.info("warm start: fine-tuning", round=round_index, kept=found.kept.batch_size, accepted=found.accepted,
             sampled=found.sampled)
    history = fine_tune(prepared, found.kept, folder, progress, round_index)
    t2 = time.perf_counter()
    return {
        "round": round_index, "sampled_from": config.model.path,
        "contexts": min(warm.prompts, len(prepared.source.records)),
        "sampled": found.sampled, "accepted": found.accepted, "kept": found.kept.batch_size,
        "passed": found.passed, "reward_total_mean_sampled": found.total_mean_all,
        "reward_total_mean_kept": found.total_mean_kept, "updates": len(history),
        "entropy_first": history[0].get("trainer/entropy"), "entropy_last": history[-1].get("trainer/entropy"),
        "sample_seconds": round(t1 - t0, 1), "fine_tune_seconds": round(t2 - t1, 1),
    }


def make_warm_start(config: RunConfig, *, registry: Registry | None = None, progress: bool = True) -> Path:
    """The warm start of ``config`` alone, RL not started: made (or reused) in ``RUN/warm_start/`` under the run
    folder's lock; returns its policy folder. ``rlgen warm-start`` and a multi-rank launch call this first."""
    if not config.warm_start.prompts:
        raise RlgenError(f"{config.origin}: warm_start.prompts is 0: the config has no warm start")
    prepared = session.prepare(config, registry)
    with run_lock.hold(Path(config.run.output_dir)):
        return run_warm_start(prepared, progress)
