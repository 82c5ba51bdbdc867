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
from .data import PromptSource, read_records, read_rows, rename_fields
from .discovery import Registry, registry as discover
from .errors import ConfigError
from .interfaces import Plugin, RewardProvider, RunContext, Sampler
from .logs import get_logger

log = get_logger("rlgen.session")

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
    rows = read_rows(path)
    if data.limit:
        rows = rows[: data.limit]
    records = rename_fields(path, rows, fields)
    return PromptSource(records, template, data.sampled_prompts_per_step, config.run.seed, system_prompt, data.shuffle,
                        origin=str(path), lines=[line for line, _ in rows])


def check_output_dir(config: RunConfig) -> None:
    """``run.output_dir`` must be a folder or not exist yet (it is created when the run starts)."""
    out = Path(config.run.output_dir)
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == out else f"is inside {folder}, which is a file"
                raise ConfigError(f"{config.origin}: run.output_dir {out} {what}, not a folder; choose another run.output_dir")
            return


def check_model(config: RunConfig, plan: RunPlan, registry: Registry) -> Sampler:
    """The configured sampler (built, not set up), after it checked the model and tokenizer it would load."""
    sampler: Sampler = plan.sampler.build()  # type: ignore[assignment]
    try:
        sampler.check(run_context(config, registry, Path(config.run.output_dir)))
    except ConfigError as exc:
        raise ConfigError(f"{config.origin}: {exc}") from None
    return sampler


def check_prompt_lengths(config: RunConfig, sampler: Sampler, source: PromptSource, registry: Registry) -> None:
    """Apply ``data.long_prompts`` to prompts longer than the limit: refuse them, drop them from
    ``source`` (with a count), or leave them to the sampler to truncate."""
    data = config.data
    context = run_context(config, registry, Path(config.run.output_dir))
    model_limit = sampler.max_prompt_tokens(context)
    limits = [(n, why) for n, why in ((data.max_prompt_tokens, "data.max_prompt_tokens"),
                                      (model_limit, f"the model's context less the sampler's completion budget"))
              if n is not None]
    if not limits:
        return
    limit, why = min(limits)
    counts = sampler.prompt_token_counts(context, [source.prompt(r) for r in source.records])
    if counts is None:
        if data.max_prompt_tokens is not None:
            raise ConfigError(f"{config.origin}: data.max_prompt_tokens: sampler '{sampler.name}' cannot count prompt "
                              "tokens, so the limit cannot be applied; remove it or use a sampler that can (hf)")
        return
    over = [i for i, n in enumerate(counts) if n > limit]
    if not over:
        return
    shown = ", ".join(f"{source.lines[i]} ({counts[i]} tokens)" for i in over[:5]) + (", ..." if len(over) > 5 else "")
    what = f"{len(over)} of {len(counts)} prompts are longer than {limit} tokens ({why}): line{'s' if len(over) > 1 else ''} {shown}"
    if data.long_prompts == "error":
        raise ConfigError(f"{source.origin}: {what}; shorten them, or set data.long_prompts to skip or truncate")
    if data.long_prompts == "skip":
        if len(over) == len(counts):
            raise ConfigError(f"{source.origin}: {what}; data.long_prompts: skip would leave no prompts")
        dropped = set(over)
        source.records = [r for i, r in enumerate(source.records) if i not in dropped]
        source.lines = [n for i, n in enumerate(source.lines) if i not in dropped]
        log.warning("skipping long prompts (data.long_prompts: skip)", data=source.origin, skipped=len(over),
                    kept=len(source.records), limit=limit)
    else:
        log.info("long prompts will be truncated to their last tokens (data.long_prompts: truncate)",
                 data=source.origin, prompts=len(over), limit=limit)


@dataclass
class PreparedRun:
    """A config checked end to end: its plugins resolved with valid params, its data read."""

    config: RunConfig
    plan: RunPlan
    source: PromptSource
    registry: Registry


def prepare(config: RunConfig, registry: Registry | None = None) -> PreparedRun:
    """Everything `rlgen validate` checks, writing nothing: plugins, params, the run folder's
    place, the model and tokenizer files, data, template and prompt lengths."""
    registry = registry or discover()
    plan = plan_run(config, registry)
    check_output_dir(config)
    source = build_prompt_source(config, registry)
    sampler = check_model(config, plan, registry)
    check_prompt_lengths(config, sampler, source, registry)
    return PreparedRun(config, plan, source, registry)


def with_model_path(config: RunConfig, path: str | Path) -> RunConfig:
    """``config`` with ``model.path`` set to ``path``, everything else (its origin too) as it was."""
    return config.model_copy(update={"model": config.model.model_copy(update={"path": str(path)})})


def with_policy(config: RunConfig, policy: str | None, registry: Registry | None = None) -> tuple[RunConfig, RunPlan, Registry]:
    """The config with ``model.path`` pointing at ``policy`` (when given), its validated plan, and the registry."""
    if policy:
        check_policy_exists(policy)
        config = with_model_path(config, policy)
    registry = registry or discover()
    plan = plan_run(config, registry)
    if policy:
        try:
            check_model(config, plan, registry)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (model.path set by --policy)") from None
    return config, plan, registry


def _looks_like_a_path(spec: str) -> bool:
    """A spec a hub id could not be: absolute, relative to here (./ ../ ~), or more than one '/'."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec


def check_policy_exists(policy: str) -> None:
    """``--policy`` that is meant as a local path must exist (hub ids and builtin:NAME are the sampler's to check)."""
    if not policy.startswith("builtin:") and _looks_like_a_path(policy) and not Path(policy).expanduser().exists():
        raise ConfigError(f"--policy {policy} does not exist (a run's policy folder, a model folder, an HF model id, or builtin:NAME)")


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
