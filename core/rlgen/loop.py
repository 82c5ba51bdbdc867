"""The training loop: sampler -> rewards -> combiner -> trainer -> weight sync -> hooks.

Data flows one way through the contracts; the loop validates each hand-over, seeds every RNG
from (run seed, step, rank) so a resumed run repeats an uninterrupted one, and owns the run
folder: ``metrics.jsonl``, ``checkpoints/``, ``policy/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import tqdm

from . import checkpoints, metrics_log
from .advantage import check_advantages
from .config import RunConfig, RunPlan, plan_run
from .data import PromptSource, read_records
from .errors import CheckpointError, ConfigError
from .interfaces import Plugin, RunContext
from .logs import get_logger
from .discovery import Registry, registry as discover
from .reward import RewardResult, check_reward_result
from .seeding import seed_everything, step_seed

log = get_logger("rlgen.loop")


@dataclass
class RunResult:
    output_dir: Path
    last_step: int
    metrics: list[dict[str, float]] = field(default_factory=list)


def default_cache_dir(config: RunConfig) -> Path:
    if config.run.cache_dir:
        return Path(config.run.cache_dir).expanduser()
    return Path(os.environ.get("RLGEN_CACHE_DIR", "~/.cache/rlgen")).expanduser()


def distributed_env() -> tuple[int, int]:
    """(rank, world size) as set by torchrun or the deepspeed launcher; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def build_prompt_source(config: RunConfig, registry: Registry, cache_dir: Path) -> PromptSource:
    """Read the configured data and check the template against it (no writes to the run folder)."""
    data = config.data
    template, system_prompt, fields = data.prompt_template, data.system_prompt, dict(data.fields)
    if data.path.startswith("builtin:"):
        builtin = registry.resolve_dataset(data.path, data.split, cache_dir)
        path = builtin.path
        template = template or builtin.prompt_template
        system_prompt = system_prompt if system_prompt is not None else builtin.system_prompt
        fields = {**builtin.fields, **fields}
    else:
        path = Path(data.path)
    if not template:
        raise ConfigError(f"{config.origin}: data.prompt_template is required for {data.path}")
    records = read_records(path, fields)
    if data.limit:
        records = records[: data.limit]
    return PromptSource(
        records, template, data.prompts_per_step, config.run.seed, system_prompt, data.shuffle, origin=config.origin
    )


def prepare(config: RunConfig, registry: Registry | None = None) -> tuple[RunPlan, PromptSource, Registry]:
    """Everything `rlgen validate` checks: plugins, params, data and template."""
    registry = registry or discover()
    plan = plan_run(config, registry)
    source = build_prompt_source(config, registry, default_cache_dir(config))
    return plan, source, registry


def _all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    keys = sorted(values)
    # nccl reduces only accelerator tensors; gloo only CPU ones
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t /= torch.distributed.get_world_size()
    return dict(zip(keys, t.cpu().tolist()))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class _Run:
    """State of one training run; `train` below is the public entry point."""

    def __init__(self, config: RunConfig, plan: RunPlan, source: PromptSource, registry: Registry, progress: bool):
        self.config = config
        self.plan = plan
        self.source = source
        self.registry = registry
        self.progress = progress
        self.rank, self.world_size = distributed_env()
        self.output_dir = Path(config.run.output_dir)
        self.ckpt_root = self.output_dir / "checkpoints"
        self.context = RunContext(
            config=config, registry=registry, output_dir=self.output_dir, cache_dir=default_cache_dir(config),
            seed=config.run.seed, rank=self.rank, world_size=self.world_size,
        )
        self.trainer = plan.trainer.build()
        self.sampler = plan.sampler.build()
        self.advantage = plan.advantage.build()
        self.rewards = {p.alias or p.name: p.build() for p in plan.rewards}
        self.weights = {p.alias or p.name: p.weight for p in plan.rewards}
        self.callbacks = [p.build() for p in plan.callbacks]
        self._eval: tuple[PromptSource, dict[str, Plugin]] | None = None

    # -- plugin state ---------------------------------------------------------------------

    def _stateful(self) -> dict[str, Plugin]:
        named: dict[str, Plugin] = {"sampler": self.sampler, "advantage": self.advantage}
        named.update({f"rewards.{k}": v for k, v in self.rewards.items()})
        named.update({f"callbacks.{i}": c for i, c in enumerate(self.callbacks)})
        return named

    def save_checkpoint(self, step: int, metrics: dict[str, float]) -> Path:
        staging = checkpoints.staging_dir(self.ckpt_root, step)
        final = checkpoints.step_dir(self.ckpt_root, step)
        if self.context.is_main:
            if staging.exists():
                shutil.rmtree(staging)
            (staging / "trainer").mkdir(parents=True)
        _barrier()
        self.trainer.save_checkpoint(staging / "trainer")
        _barrier()
        if self.context.is_main:
            states = {k: p.state_dict() for k, p in self._stateful().items()}
            checkpoints.finish(staging, final, {"step": step, "metrics": metrics}, states)
            checkpoints.prune(self.ckpt_root, self.config.run.keep_checkpoints)
        _barrier()
        self.registry.pm.hook.rlgen_on_checkpoint(step=step, path=final)
        return final

    def restore(self) -> int:
        """Load the newest intact checkpoint (rank 0 verifies it against its manifest and picks it for all ranks)."""
        choice = 0
        if self.context.is_main:
            try:
                found = checkpoints.newest_intact(self.ckpt_root, warn=log.warning)
            except CheckpointError:
                checkpoints.agree_across_ranks(-1)
                raise
            choice = found[0] if found else 0
        step = checkpoints.agree_across_ranks(choice)
        if step < 0:
            raise CheckpointError(f"rank {self.rank}: rank 0 found no intact checkpoint in {self.ckpt_root}")
        if step == 0:
            log.info("no checkpoint to resume from; starting at step 1", folder=str(self.ckpt_root))
            return 0
        folder = checkpoints.step_dir(self.ckpt_root, step)
        loop_state, states = checkpoints.load(folder)
        self.trainer.load_checkpoint(folder / "trainer")
        for key, plugin in self._stateful().items():
            if key in states:
                plugin.load_state_dict(states[key])
        log.info("resumed", step=step, checkpoint=str(folder))
        return int(loop_state["step"])

    # -- the loop ---------------------------------------------------------------------------

    def score(self, rollout) -> dict[str, RewardResult]:
        results = {}
        for key, provider in self.rewards.items():
            raw = provider.score(rollout)
            results[key] = check_reward_result(raw, plugin=provider.name, granularity=provider.granularity, rollout=rollout)
        return results

    def step(self, step: int) -> tuple[dict[str, float], Any, dict[str, RewardResult], torch.Tensor]:
        seed = step_seed(self.config.run.seed, step, self.rank)
        seed_everything(seed)
        t0 = time.perf_counter()
        prompts = self.source.batch(step, self.rank, self.world_size)
        rollout = self.sampler.generate(prompts, self.config.group_size, seed)
        t1 = time.perf_counter()
        rewards = self.score(rollout)
        t2 = time.perf_counter()
        adv = self.advantage.combine(rollout, rewards, self.weights)
        adv = check_advantages(adv, plugin=self.advantage.name, rollout=rollout)
        t3 = time.perf_counter()
        trainer_metrics = self.trainer.step(rollout, adv)
        t4 = time.perf_counter()
        sync_metrics = self.sampler.sync_weights(self.trainer) or {}
        t5 = time.perf_counter()

        mask = rollout.completion_mask
        local: dict[str, float] = {}
        total = torch.zeros(rollout.batch_size)
        for key, res in rewards.items():
            per_sample = res.to_sentence(mask)
            total += self.weights[key] * per_sample
            local[f"reward/{key}/mean"] = float(per_sample.mean())
            for mk, mv in res.metrics.items():
                local[f"reward/{key}/{mk}"] = float(mv)
        local["reward/total/mean"] = float(total.mean())
        local["completion/tokens_mean"] = float(mask.sum(1).float().mean())
        local["advantage/abs_mean"] = float(adv.abs().sum() / mask.sum().clamp(min=1))
        local.update({f"advantage/{k}": float(v) for k, v in self.advantage.metrics().items()})
        metrics = _all_reduce_mean(local)
        metrics.update({f"trainer/{k}": float(v) for k, v in trainer_metrics.items()})
        metrics.update({f"sampler/{k}": float(v) for k, v in sync_metrics.items()})
        metrics.update({
            "time/sample_s": t1 - t0, "time/reward_s": t2 - t1, "time/advantage_s": t3 - t2,
            "time/train_s": t4 - t3, "time/sync_s": t5 - t4, "time/step_s": t5 - t0,
        })
        return metrics, rollout, rewards, adv

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics with the live policy; rewards are fresh instances so that stateful
        ones (rolling windows) do not learn from eval completions."""
        from .evaluate import run_evaluation
        from .generate import contexts_source

        ev = self.config.eval
        if self._eval is None:
            source = contexts_source(self.config, self.registry, ev.data, split=ev.split)
            if ev.limit:
                source.records = source.records[: ev.limit]
            rewards = {p.alias or p.name: p.build() for p in self.plan.rewards}
            for r in rewards.values():
                r.setup(self.context)
            self._eval = (source, rewards)
        source, rewards = self._eval
        result = run_evaluation(self.sampler, rewards, source, self.registry, self.config,  # type: ignore[arg-type]
                                samples_per_context=ev.samples_per_context, seed=self.config.run.seed, progress=False)
        return {f"eval/{k}": v["mean"] for k, v in result.summary.items()}

    def run(self, resume: bool) -> RunResult:
        cfg = self.config
        torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed)
        if self.context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(
                __import__("yaml").safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
            )
        log.info("setting up plugins", trainer=self.plan.trainer.name, sampler=self.plan.sampler.name,
                 advantage=self.plan.advantage.name, rewards=list(self.rewards))
        self.trainer.setup(self.context)
        self.sampler.setup(self.context)
        for plugin in list(self.rewards.values()) + [self.advantage] + self.callbacks:
            plugin.setup(self.context)
        start = self.restore() if resume else 0
        self.sampler.sync_weights(self.trainer)
        for cb in self.callbacks:
            self.registry.pm.register(cb, name=f"callback:{cb.name}:{id(cb):x}")
        self.registry.pm.hook.rlgen_on_run_start(config=cfg, context=self.context)

        metrics_path = self.output_dir / "metrics.jsonl"
        history: list[dict[str, float]] = []
        if self.context.is_main:
            # resuming keeps the lines up to the checkpoint; a torn last line (power loss) is trimmed
            kept = metrics_log.read_until(metrics_path, start, warn=log.warning) if resume else []
            metrics_log.rewrite(metrics_path, kept)
        bar = tqdm.tqdm(total=cfg.run.steps, initial=start, desc="train", unit="step",
                        disable=not (self.progress and self.context.is_main), dynamic_ncols=True)
        metrics: dict[str, float] = {}
        step = start
        try:
            for step in range(start + 1, cfg.run.steps + 1):
                metrics, rollout, rewards, adv = self.step(step)
                metrics = {"step": step, **metrics}
                if cfg.eval.every and step % cfg.eval.every == 0:
                    metrics.update(self.evaluate(step))
                history.append(metrics)
                if self.context.is_main:
                    with metrics_path.open("a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                self.registry.pm.hook.rlgen_on_step_end(
                    step=step, metrics=metrics, rollout=rollout, rewards=rewards, advantages=adv
                )
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/total/mean']:.3f}",
                                loss=f"{metrics.get('trainer/loss', float('nan')):.4f}", refresh=False)
                if not bar.disable and step % 10 == 0 or bar.disable:
                    log.info("step", step=step, reward=round(metrics["reward/total/mean"], 4),
                             loss=round(metrics.get("trainer/loss", float("nan")), 5),
                             seconds=round(metrics["time/step_s"], 2))
                if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and step < cfg.run.steps:
                    self.save_checkpoint(step, metrics)
            bar.close()
            if cfg.run.save_final and step > start:
                self.save_checkpoint(step, metrics)
                export = self.output_dir / "policy"
                self.trainer.export_policy(export)
                log.info("policy exported", folder=str(export))
            self.registry.pm.hook.rlgen_on_run_end(step=step, metrics=metrics, output_dir=self.output_dir)
        finally:
            bar.close()
            for cb in self.callbacks:
                self.registry.pm.unregister(cb)
            eval_rewards = list(self._eval[1].values()) if self._eval else []
            for plugin in [*self.callbacks, *self.rewards.values(), *eval_rewards, self.advantage, self.sampler,
                           self.trainer]:
                plugin.close()
        return RunResult(self.output_dir, step, history)


def train(
    config: RunConfig, *, resume: bool = False, registry: Registry | None = None, progress: bool = True
) -> RunResult:
    """Validate ``config`` completely, then train; returns the run folder and per-step metrics."""
    plan, source, registry = prepare(config, registry)
    out = Path(config.run.output_dir)
    if not resume and checkpoints.latest_checkpoint(out / "checkpoints") is not None:
        raise ConfigError(
            f"{config.origin}: run.output_dir {out} already holds checkpoints; pass --resume to continue, "
            "or choose another folder"
        )
    return _Run(config, plan, source, registry, progress).run(resume)
