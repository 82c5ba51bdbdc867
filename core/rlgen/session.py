"""Preparing a run or a policy: config -> plugins, data and context, ready for training, generation or evaluation.

`rlgen train`, `rlgen validate`, `rlgen generate`, `rlgen eval`, the periodic evaluation inside a
run and plugin labs (the RELATE demo) all need the same few things: the cache folder, the
prompt source of the config's data, the contexts to generate on, the configured plugins built
from their validated params, and those plugins set up and closed again. They live here once,
so every entry point prepares a run the same way and the loop, generation and evaluation
modules do not import each other.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .config import RunConfig, RunPlan, plan_run
from .data import PromptSource, read_records
from .discovery import Registry, registry as discover
from .errors import ConfigError
from .interfaces import Plugin, RewardProvider, RunContext

#: where builtin models and data are materialised when neither run.cache_dir nor this is set: ~/.cache/rlgen
CACHE_ENV = "RLGEN_CACHE_DIR"


def cache_dir(config: RunConfig) -> Path:
    """``run.cache_dir``, else ``$RLGEN_CACHE_DIR``, else ``~/.cache/rlgen``."""
    if config.run.cache_dir:
        return Path(config.run.cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV, "~/.cache/rlgen")).expanduser()


def build_prompt_source(config: RunConfig, registry: Registry) -> PromptSource:
    """Read the configured data and check the template against it (no writes to the run folder)."""
    data = config.data
    template, system_prompt, fields = data.prompt_template, data.system_prompt, dict(data.fields)
    if data.path.startswith("builtin:"):
        builtin = registry.resolve_dataset(data.path, data.split, cache_dir(config))
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


@dataclass
class PreparedRun:
    """A config checked end to end: its plugins resolved with valid params, its data read."""

    config: RunConfig
    plan: RunPlan
    source: PromptSource
    registry: Registry


def prepare(config: RunConfig, registry: Registry | None = None) -> PreparedRun:
    """Everything `rlgen validate` checks: plugins, params, data and template."""
    registry = registry or discover()
    plan = plan_run(config, registry)
    return PreparedRun(config, plan, build_prompt_source(config, registry), registry)


def with_policy(config: RunConfig, policy: str | None, registry: Registry | None = None) -> tuple[RunConfig, RunPlan, Registry]:
    """The config with ``model.path`` pointing at ``policy`` (when given), its validated plan, and the registry."""
    if policy:
        config = config.model_copy(update={"model": config.model.model_copy(update={"path": policy})})
    registry = registry or discover()
    return config, plan_run(config, registry), registry


def contexts_source(config: RunConfig, registry: Registry, data: str | None, split: str | None) -> PromptSource:
    """Contexts in file order (no shuffling): ``data`` if given, else the config's data (``split`` for builtin)."""
    if split is not None and config.data.path.startswith("builtin:"):
        config = config.model_copy(update={"data": config.data.model_copy(update={"split": split})})
    source = build_prompt_source(config, registry)
    records = read_records(data, dict(config.data.fields)) if data else source.records
    return PromptSource(records, source.template, 1, config.run.seed, source.system_prompt, shuffle=False,
                        origin=data or config.origin)


def eval_contexts(config: RunConfig, registry: Registry, data: str | None = None, limit: int | None = None) -> PromptSource:
    """The contexts an evaluation generates on: ``data`` or ``eval.data`` or the eval split, the first ``limit`` or ``eval.limit``."""
    ev = config.eval
    source = contexts_source(config, registry, data or ev.data, split=ev.split)
    limit = limit or ev.limit
    if limit:
        source.records = source.records[:limit]
    return source


def config_for_policy(policy: str) -> Path | None:
    """The ``config.yaml`` of the run a policy folder was exported from (``RUN/policy`` -> ``RUN/config.yaml``)."""
    candidate = Path(policy).parent / "config.yaml"
    return candidate if Path(policy).is_dir() and candidate.exists() else None


def build_rewards(plan: RunPlan) -> dict[str, RewardProvider]:
    """One fresh instance of every configured reward, by its key in metrics (alias or name)."""
    return {p.alias or p.name: p.build() for p in plan.rewards}  # type: ignore[misc]


def reward_weights(plan: RunPlan) -> dict[str, float]:
    """The weight w_k of every configured reward, by the same keys as :func:`build_rewards`."""
    return {p.alias or p.name: p.weight for p in plan.rewards}


def cpu_threads(config: RunConfig, world_size: int = 1) -> int:
    """Torch CPU threads for one process: ``run.threads``, or for ``auto`` OMP_NUM_THREADS when set
    (an explicit choice, e.g. the test suite's 1), else this machine's usable cores shared evenly
    by the ranks running on it (``LOCAL_WORLD_SIZE`` from the launcher, else ``world_size``)."""
    if config.run.threads != "auto":
        return int(config.run.threads)
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, cores // max(1, local_ranks))


def run_context(config: RunConfig, registry: Registry, output_dir: Path, *, seed: int | None = None,
                rank: int = 0, world_size: int = 1) -> RunContext:
    """The :class:`RunContext` plugins are set up with."""
    return RunContext(config=config, registry=registry, output_dir=Path(output_dir), cache_dir=cache_dir(config),
                      seed=config.run.seed if seed is None else seed, rank=rank, world_size=world_size,
                      threads=cpu_threads(config, world_size))


@contextlib.contextmanager
def plugins_set_up(context: RunContext, plugins: list[Plugin]) -> Iterator[None]:
    """Set up ``plugins`` in order and close every one that was set up, in reverse, however the block ends."""
    done: list[Plugin] = []
    try:
        for plugin in plugins:
            plugin.setup(context)
            done.append(plugin)
        yield
    finally:
        for plugin in reversed(done):
            plugin.close()
