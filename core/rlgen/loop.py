"""The training loop: sampler -> rewards -> combiner -> trainer -> weight sync -> hooks.

Data flows one way through the contracts; the loop validates each hand-over, seeds every RNG
from (run seed, step, rank) so a resumed run repeats an uninterrupted one, and owns the run
folder: ``metrics.jsonl``, ``checkpoints/``, ``policy/``.

With ``run.async_rollouts: 1`` the sampler runs in its own process (:mod:`rlgen.rollout_worker`)
one rollout ahead: while the trainer updates on rollout k, the worker samples rollout k+1 with
the weights of step k-1, and a checkpoint carries that rollout (:mod:`rlgen.rollout_store`).

With ``validation.every`` the loop scores held-out contexts every few steps and, with
``validation.keep_best``, exports the best-scoring policy to ``best_policy/`` (:mod:`rlgen.validation`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import tqdm

from . import checkpoints, metrics_log, run_lock, session, warm_start
from .advantage import check_advantages
from .allocator import reuse_freed_memory
from .compute import detect_compute
from .config import RunConfig
from .discovery import Registry
from .errors import CheckpointError, ConfigError, PluginError, PluginFault, RlgenError
from .evaluate import evaluate_policy
from .group_selection import most_spread_groups, weighted_total
from .interfaces import Plugin, RewardProvider
from .resume_config import check_resume_config
from .rollout_store import load_rollout, save_rollout
from .rollout_worker import SamplerWorker, WorkerSpec
from .logs import get_logger
from .reward import RewardResult, check_reward_result
from .seeding import seed_everything, step_seed
from .validation import BEST_POLICY, PREFIX, BestSoFar, check_held_out, validation_config, write_selection

log = get_logger("rlgen.loop")

#: the folder of a checkpoint holding the rollout in flight (``run.async_rollouts: 1``)
ROLLOUT_DIR = "rollout"


@dataclass
class RunResult:
    output_dir: Path
    last_step: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    #: ``best_policy/`` when ``validation.keep_best`` selected one, else None
    best_policy: Path | None = None


def distributed_env() -> tuple[int, int]:
    """(rank, world size) as set by torchrun or the deepspeed launcher; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def check_async_rollouts(config: RunConfig, world_size: int) -> None:
    """``run.async_rollouts: 1`` runs one sampler process beside one trainer: refuse it for several ranks."""
    if config.run.async_rollouts and world_size > 1:
        raise ConfigError(
            f"{config.origin}: run.async_rollouts: 1 runs on one rank only, this run has {world_size} "
            f"(sampler '{config.sampler.name}'); set run.async_rollouts: 0 for distributed runs"
        )


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


class _TimeLimit:
    """``run.time_limit_s``: whether another step fits, judged by the longest step so far (asked after a step,
    so the first step always runs).

    Every rank takes the same decision (the stop flag is averaged over ranks), so none waits on a
    collective the others skipped.
    """

    def __init__(self, limit_s: float | None):
        self.limit_s = limit_s
        self.started = time.perf_counter()
        self.longest = 0.0
        self._step_t0 = self.started

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step_started(self) -> None:
        self._step_t0 = time.perf_counter()

    def step_ended(self) -> None:
        self.longest = max(self.longest, time.perf_counter() - self._step_t0)

    def no_time_for_another_step(self) -> bool:
        if self.limit_s is None:
            return False
        stop = float(self.elapsed() + self.longest > self.limit_s)
        return _all_reduce_mean({"stop": stop})["stop"] > 0


class _Run:
    """State of one training run; `train` below is the public entry point."""

    def __init__(self, prepared: session.PreparedRun, progress: bool, saved_config: RunConfig | None = None):
        config, plan = prepared.config, prepared.plan
        self.config = config
        # what config.yaml records: the user's config (model.path the base even when a warm start replaced it)
        self.saved_config = saved_config or config
        self.plan = plan
        self.source = prepared.source
        self.registry = prepared.registry
        self.progress = progress
        self.rank, self.world_size = distributed_env()
        self.output_dir = Path(config.run.output_dir)
        self.ckpt_root = self.output_dir / "checkpoints"
        self.context = session.run_context(config, self.registry, self.output_dir, rank=self.rank,
                                           world_size=self.world_size)
        self.trainer = plan.trainer.build()
        self.sampler = plan.sampler.build()
        self.advantage = plan.advantage.build()
        self.rewards = session.build_rewards(plan)
        self.weights = session.reward_weights(plan)
        self.callbacks = [p.build() for p in plan.callbacks]
        self._eval_rewards: dict[str, RewardProvider] | None = None
        check_async_rollouts(config, self.world_size)
        # run.async_rollouts: 1: the sampler process, and the step whose weights sampled each rollout asked of it
        self.worker: SamplerWorker | None = None
        self._weights_step: dict[int, int] = {}
        self._published: int | None = None
        self.best = BestSoFar.from_config(config)
        check_held_out(config, self.registry, self.source)

    # -- plugin state ---------------------------------------------------------------------

    def _stateful(self) -> dict[str, Plugin]:
        # with a sampler process, the sampler whose state matters is the one there (saved and restored apart)
        named: dict[str, Plugin] = {"advantage": self.advantage} if self.worker else {"sampler": self.sampler,
                                                                                      "advantage": self.advantage}
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
            if self.worker is not None:
                states["sampler"] = self.worker.state_dict()
                if step + 1 in self._weights_step:  # the rollout in flight: its weights are gone after this step
                    rollout, sync_metrics, generate_s = self.worker.peek(step + 1)
                    save_rollout(rollout, staging / ROLLOUT_DIR, {
                        "step": step + 1, "weights_step": self._weights_step[step + 1],
                        "sync_metrics": sync_metrics, "generate_s": generate_s,
                    })
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
        if self.worker is not None and "sampler" in states:
            self.worker.load_state_dict(states["sampler"])
        if (folder / ROLLOUT_DIR).is_dir():
            rollout, info = load_rollout(folder / ROLLOUT_DIR)
            if self.worker is None:
                log.info("the checkpoint's rollout in flight is not used: run.async_rollouts is 0",
                         checkpoint=str(folder))
            elif info.get("step") == step + 1 and isinstance(info.get("weights_step"), int):
                self.worker.put(step + 1, rollout, dict(info.get("sync_metrics") or {}), float(info.get("generate_s", 0.0)))
                self._weights_step[step + 1] = info["weights_step"]
        log.info("resumed", step=step, checkpoint=str(folder))
        return int(loop_state["step"])

    # -- the loop ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def blame(self, kind: str, plugin: str, hook: str, step: int) -> Iterator[None]:
        """Turn an unexpected exception of ``plugin``'s ``hook`` into a :class:`PluginFault`: one line
        for the console, the full traceback appended to the run folder's error log.

        RlgenErrors pass unchanged (they already are one clear line), and so do KeyboardInterrupt
        and SystemExit, which are not Exceptions.
        """
        try:
            yield
        except RlgenError:
            raise
        except Exception as exc:
            log_file = self.output_dir / ("error.log" if self.rank == 0 else f"error-rank{self.rank}.log")
            with contextlib.suppress(OSError), log_file.open("a", encoding="utf-8") as fh:
                fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} step {step}: {kind} '{plugin}' raised in {hook}\n")
                fh.write(traceback.format_exc())
            first = (str(exc).strip().splitlines() or [""])[0]
            raise PluginFault(
                f"{kind} '{plugin}' raised {type(exc).__name__} in {hook} at step {step}"
                f"{': ' + first if first else ''}; traceback in {log_file}",
                kind=kind, plugin=plugin, hook=hook, step=step, log_file=str(log_file),
            ) from exc

    def score(self, rollout, step: int) -> dict[str, RewardResult]:
        results = {}
        for key, provider in self.rewards.items():
            with self.blame("reward", key, "score", step):
                raw = provider.score(rollout)
            results[key] = check_reward_result(raw, plugin=provider.name, granularity=provider.granularity, rollout=rollout)
        return results

    def request_rollout(self, step: int, weights_step: int) -> None:
        """Publish the trainer's weights of ``weights_step`` (once) and have the sampler process sample
        ``step``'s rollout with them while this process goes on."""
        assert self.worker is not None
        sync = self._published != weights_step
        if sync:
            with self.blame("trainer", self.trainer.name, "export_weights", step):
                self.worker.publish(self.trainer)
            self._published = weights_step
        prompts = self.source.batch(step, self.rank, self.world_size)
        self.worker.request(step, prompts, self.config.group_size, step_seed(self.config.run.seed, step, self.rank), sync)
        self._weights_step[step] = weights_step

    def take_rollout(self, step: int) -> tuple[Any, dict[str, float]]:
        """The sampler process's rollout of ``step``, marked with its staleness, and the step's async metrics."""
        assert self.worker is not None
        with self.blame("sampler", self.sampler.name, "generate", step):
            rollout, sync_metrics, generate_s = self.worker.take(step)
        # the trainer now holds the weights of step - 1
        staleness = step - 1 - self._weights_step.pop(step)
        if rollout.logprobs is None:
            raise PluginError(
                f"{self.config.origin}: run.async_rollouts: 1 needs the sampler's log-probs as pi_old, and sampler "
                f"'{self.sampler.name}' returns no Rollout.logprobs; set run.async_rollouts: 0"
            )
        metrics = {f"sampler/{k}": float(v) for k, v in sync_metrics.items()}
        metrics.update({"rollout/staleness": float(staleness), "time/generate_worker_s": generate_s})
        return replace(rollout, staleness=staleness), metrics

    def step(self, step: int) -> tuple[dict[str, float], Any, dict[str, RewardResult], torch.Tensor]:
        seed = step_seed(self.config.run.seed, step, self.rank)
        seed_everything(seed)
        t0 = time.perf_counter()
        async_metrics: dict[str, float] = {}
        if self.worker is None:
            prompts = self.source.batch(step, self.rank, self.world_size)
            with self.blame("sampler", self.sampler.name, "generate", step):
                rollout = self.sampler.generate(prompts, self.config.group_size, seed)
        else:
            rollout, async_metrics = self.take_rollout(step)
            tick = time.perf_counter()
            if step < self.config.run.steps:
                self.request_rollout(step + 1, weights_step=step - 1)
            async_metrics["time/publish_s"] = time.perf_counter() - tick
        t1 = time.perf_counter()
        rewards = self.score(rollout, step)
        # the reward metrics describe what the policy sampled; the trainer may learn from a selection of it
        sampled, sampled_rewards = rollout, rewards
        selection: dict[str, float] = {}
        if self.config.data.oversample > 1:
            rows, selection = most_spread_groups(rollout, rewards, self.weights, self.config.data.prompts_per_step,
                                                 self.config.data.oversample_rank)
            rollout = rollout.select(rows)
            rewards = {key: result.select(rows) for key, result in rewards.items()}
        t2 = time.perf_counter()
        with self.blame("advantage", self.advantage.name, "combine", step):
            adv = self.advantage.combine(rollout, rewards, self.weights)
        adv = check_advantages(adv, plugin=self.advantage.name, rollout=rollout)
        t3 = time.perf_counter()
        with self.blame("trainer", self.trainer.name, "step", step):
            trainer_metrics = self.trainer.step(rollout, adv)
        t4 = time.perf_counter()
        sync_metrics: dict[str, float] = {}
        if self.worker is None:  # else the next rollout is being sampled already
            with self.blame("sampler", self.sampler.name, "sync_weights", step):
                sync_metrics = self.sampler.sync_weights(self.trainer) or {}
        t5 = time.perf_counter()

        mask = sampled.completion_mask
        local: dict[str, float] = {}
        for key, res in sampled_rewards.items():
            local[f"reward/{key}/mean"] = float(res.to_sentence(mask).mean())
            for mk, mv in res.metrics.items():
                local[f"reward/{key}/{mk}"] = float(mv)
        local["reward/total/mean"] = float(weighted_total(sampled, sampled_rewards, self.weights).mean())
        local["completion/tokens_mean"] = float(mask.sum(1).float().mean())
        local["advantage/abs_mean"] = float(adv.abs().sum() / rollout.completion_mask.sum().clamp(min=1))
        local.update({f"data/{k}": v for k, v in selection.items()})
        local.update({f"advantage/{k}": float(v) for k, v in self.advantage.metrics().items()})
        metrics = _all_reduce_mean(local)
        metrics.update({f"trainer/{k}": float(v) for k, v in trainer_metrics.items()})
        metrics.update({f"sampler/{k}": float(v) for k, v in sync_metrics.items()})
        metrics.update({
            "time/sample_s": t1 - t0, "time/reward_s": t2 - t1, "time/advantage_s": t3 - t2,
            "time/train_s": t4 - t3, "time/sync_s": t5 - t4, "time/step_s": t5 - t0,
        })
        if self.worker is not None:
            # time/sample_s is the wait for the rollout plus publishing the weights for the next one
            metrics.update(async_metrics)
        return metrics, rollout, rewards, adv

    def sync_eval_sampler(self, step: int) -> None:
        """With a sampler process, this process's sampler only evaluates: give it the trainer's weights first."""
        if self.worker is not None:
            with self.blame("sampler", self.sampler.name, "sync_weights", step):
                self.sampler.sync_weights(self.trainer)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics with the live policy; rewards are fresh instances (set up once, kept for
        the run) so that stateful ones (rolling windows) do not learn from eval completions."""
        self.sync_eval_sampler(step)
        if self._eval_rewards is None:
            self._eval_rewards = session.build_rewards(self.plan)
            for r in self._eval_rewards.values():
                r.setup(self.context)
        result = evaluate_policy(self.config, sampler=self.sampler, rewards=self._eval_rewards,
                                 registry=self.registry, output_dir=self.output_dir, progress=False)
        return {f"eval/{k}": v["mean"] for k, v in result.summary.items()}

    def validate(self, step: int) -> dict[str, float]:
        """Score the live policy on the validation contexts (fresh reward instances, as ``rlgen eval``); with
        ``validation.keep_best``, export it to ``best_policy/`` when it beats every earlier validation."""
        self.sync_eval_sampler(step)
        result = evaluate_policy(validation_config(self.config), sampler=self.sampler, registry=self.registry,
                                 output_dir=self.output_dir, progress=False)
        if self.best is not None:
            value = self.best.read(result.summary, self.config.origin)
            # rank 0 decides, so that every rank joins the collective export or none does
            if checkpoints.agree_across_ranks(int(self.best.improves(value))):
                self.best.record(step, value)
                self.export_best()
        return {PREFIX + k: v["mean"] for k, v in result.summary.items()}

    def export_best(self) -> None:
        """The trainer's export of the policy, with its ``selection.json``, swapped in for ``best_policy/``."""
        assert self.best is not None
        final = self.output_dir / BEST_POLICY
        staging, old = final.with_name(BEST_POLICY + ".tmp"), final.with_name(BEST_POLICY + ".old")
        if self.context.is_main:
            for leftover in (staging, old):
                if leftover.exists():
                    shutil.rmtree(leftover)
        _barrier()
        self.trainer.export_policy(staging)
        if self.context.is_main:
            write_selection(staging, self.best)
            if final.exists():
                final.rename(old)
            staging.rename(final)
            if old.exists():
                shutil.rmtree(old)
        _barrier()
        log.info("best policy so far", step=self.best.step, metric=self.best.metric, value=round(self.best.value, 6))

    def run(self, resume: bool) -> RunResult:
        cfg = self.config
        torch.set_num_threads(self.context.threads)
        if cfg.run.reuse_freed_memory:
            reuse_freed_memory()
        seed_everything(cfg.run.seed)
        if self.context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(
                __import__("yaml").safe_dump(self.saved_config.model_dump(mode="json"), sort_keys=False)
            )
        compute = detect_compute(cfg.model.dtype)
        # one line that says where this run computes: what `auto` resolved to here, and the CPU threads
        log.info("compute", device=compute.device, dtype=compute.dtype, requested_dtype=cfg.model.dtype,
                 threads=self.context.threads, world_size=self.context.world_size)
        log.info("setting up plugins", trainer=self.plan.trainer.name, sampler=self.plan.sampler.name,
                 advantage=self.plan.advantage.name, rewards=list(self.rewards), async_rollouts=cfg.run.async_rollouts)
        if cfg.run.async_rollouts:
            # started first: the sampler process loads its model while the trainer sets up
            self.worker = SamplerWorker(WorkerSpec(
                sampler_cls=self.plan.sampler.cls, sampler_params=self.plan.sampler.params,
                config=cfg.model_dump(mode="json"), output_dir=str(self.output_dir),
                cache_dir=str(self.context.cache_dir), seed=self.context.seed, threads=self.context.threads,
            ), self.sampler.name)
        try:
            return self._run(resume)
        finally:
            if self.worker is not None:
                self.worker.close()

    def _run(self, resume: bool) -> RunResult:
        cfg = self.config
        self.trainer.setup(self.context)
        self.sampler.setup(self.context)
        for plugin in list(self.rewards.values()) + [self.advantage] + self.callbacks:
            plugin.setup(self.context)
        if self.worker is not None:
            with self.blame("sampler", self.sampler.name, "setup", 0):
                self.worker.wait_ready()
        start = self.restore() if resume else 0
        if self.worker is None:
            self.sampler.sync_weights(self.trainer)
        elif start < cfg.run.steps and start + 1 not in self._weights_step:
            self.request_rollout(start + 1, weights_step=start)
        for cb in self.callbacks:
            self.registry.pm.register(cb, name=f"callback:{cb.name}:{id(cb):x}")
        self.registry.pm.hook.rlgen_on_run_start(config=cfg, context=self.context)

        metrics_path = self.output_dir / "metrics.jsonl"
        history: list[dict[str, float]] = []
        if self.context.is_main:
            # resuming keeps the lines up to the checkpoint; a torn last line (power loss) is trimmed
            kept = metrics_log.read_until(metrics_path, start, warn=log.warning) if resume else []
            metrics_log.rewrite(metrics_path, kept)
            if self.best is not None:
                # a resumed run replays its steps exactly, so the validations after the checkpoint select again
                self.best.replay(json.loads(line) for line in kept)
        bar = tqdm.tqdm(total=cfg.run.steps, initial=start, desc="train", unit="step",
                        disable=not (self.progress and self.context.is_main), dynamic_ncols=True)
        metrics: dict[str, float] = {}
        step = start
        clock = _TimeLimit(cfg.run.time_limit_s)
        try:
            for step in range(start + 1, cfg.run.steps + 1):
                clock.step_started()
                metrics, rollout, rewards, adv = self.step(step)
                metrics = {"step": step, **metrics}
                if cfg.eval.every and step % cfg.eval.every == 0:
                    metrics.update(self.evaluate(step))
                if cfg.validation.every and (step % cfg.validation.every == 0 or step == cfg.run.steps):
                    metrics.update(self.validate(step))
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
                clock.step_ended()
                if step < cfg.run.steps and clock.no_time_for_another_step():
                    log.warning("time limit reached: stopping before the planned last step", last_step=step,
                                planned=cfg.run.steps, time_limit_s=cfg.run.time_limit_s,
                                elapsed_s=round(clock.elapsed(), 1), longest_step_s=round(clock.longest, 1))
                    break
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
            eval_rewards = list(self._eval_rewards.values()) if self._eval_rewards else []
            for plugin in [*self.callbacks, *self.rewards.values(), *eval_rewards, self.advantage, self.sampler,
                           self.trainer]:
                plugin.close()
        best = self.output_dir / BEST_POLICY
        return RunResult(self.output_dir, step, history, best_policy=best if best.is_dir() and self.best else None)


def train(
    config: RunConfig, *, resume: bool = False, allow_config_change: bool = False, registry: Registry | None = None,
    progress: bool = True,
) -> RunResult:
    """Validate ``config`` completely, then train; returns the run folder and per-step metrics.

    The run folder is locked for the whole run (:mod:`rlgen.run_lock`): a second run on it stops
    with :class:`rlgen.run_lock.RunFolderInUse` before writing anything. A resume must use the
    run's config up to harmless keys (:mod:`rlgen.resume_config`), unless ``allow_config_change``.
    """
    prepared = session.prepare(config, registry)
    out = Path(config.run.output_dir)
    rank, _ = distributed_env()
    with run_lock.hold(out, rank=rank):
        latest = checkpoints.latest_checkpoint(out / "checkpoints")
        if not resume and latest is not None:
            raise ConfigError(
                f"{config.origin}: run.output_dir {out} already holds checkpoints; pass --resume to continue, "
                "or choose another folder"
            )
        if resume and rank == 0:
            check_resume_config(config, out, allow_change=allow_config_change, step=latest[0] if latest else None)
        if config.warm_start.prompts:
            prepared = _after_warm_start(prepared, resumed_from_checkpoint=resume and latest is not None,
                                         progress=progress)
        return _Run(prepared, progress, saved_config=config).run(resume)


def _after_warm_start(prepared: session.PreparedRun, *, resumed_from_checkpoint: bool,
                      progress: bool) -> session.PreparedRun:
    """Run (or reuse) the warm start; the run then trains from its policy (``model.path``)."""
    config = prepared.config
    _, world_size = distributed_env()
    policy = warm_start.finished(config)
    if policy is None:
        if resumed_from_checkpoint:
            raise ConfigError(f"{config.origin}: the run has checkpoints but no warm-start policy made with these "
                              f"settings in {warm_start.policy_dir(Path(config.run.output_dir)).parent}")
        if world_size > 1:
            raise ConfigError(f"{config.origin}: warm_start runs in one process: run `rlgen warm-start` on this config "
                              "first (`rlgen train --nproc N` does so before it starts the ranks)")
        policy = warm_start.run_warm_start(prepared, progress)
    else:
        log.info("warm start: reusing the stored policy", folder=str(policy))
    return session.prepare(session.with_model_path(config, policy), prepared.registry)
