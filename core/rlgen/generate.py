"""`rlgen generate`: run a policy over a file of contexts with the same prompts and sampler as training.

This is how a trained policy is used, and how anyone checks it on contexts of their own: the
prompt template, chat template and post-processing all come from the run's config, so what is
generated here is what the rewards saw during training.
"""

from __future__ import annotations

import json
from pathlib import Path

import tqdm

from .config import RunConfig, RunPlan, plan_run
from .data import PromptSource, read_records
from .discovery import Registry, registry as discover
from .errors import ConfigError
from .interfaces import RunContext
from .loop import build_prompt_source, default_cache_dir
from .seeding import seed_everything, step_seed


def generate_file(
    config: RunConfig,
    *,
    policy: str | None,
    data: str | None,
    out: Path,
    n: int = 1,
    batch_prompts: int = 8,
    seed: int | None = None,
    registry: Registry | None = None,
    progress: bool = True,
) -> int:
    """Write one JSON line per context: its fields plus ``ads`` (``n`` completions). Returns the line count."""
    if n < 1:
        raise ConfigError("--n must be at least 1")
    config, plan, registry = with_policy(config, policy, registry)
    seed = config.run.seed if seed is None else seed
    source = contexts_source(config, registry, data, split=None)
    sampler = plan.sampler.build()
    sampler.setup(RunContext(config=config, registry=registry, output_dir=out.parent,
                             cache_dir=default_cache_dir(config), seed=seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh, tqdm.tqdm(total=len(source.records), unit="ctx",
                                                               desc="generate", disable=not progress) as bar:
            for start in range(0, len(source.records), batch_prompts):
                chunk = source.records[start : start + batch_prompts]
                prompts = [source.prompt(r) for r in chunk]
                batch_seed = step_seed(seed, start // batch_prompts + 1, 0)
                seed_everything(batch_seed)
                rollout = sampler.generate(prompts, n, batch_seed)
                for k, record in enumerate(chunk):
                    ads = [rollout.texts[i] for i in range(rollout.batch_size) if int(rollout.group[i]) == k]
                    fh.write(json.dumps({**record, "ads": ads}, ensure_ascii=False) + "\n")
                    written += 1
                bar.update(len(chunk))
        tmp.replace(out)
    finally:
        sampler.close()
        if tmp.exists():
            tmp.unlink()
    return written


def with_policy(config: RunConfig, policy: str | None, registry: Registry | None) -> tuple[RunConfig, RunPlan, Registry]:
    """The config with ``model.path`` pointing at ``policy``, its validated plan, and the registry."""
    if policy:
        config = config.model_copy(update={"model": config.model.model_copy(update={"path": policy})})
    registry = registry or discover()
    return config, plan_run(config, registry), registry


def contexts_source(config: RunConfig, registry: Registry, data: str | None, split: str | None) -> PromptSource:
    """Contexts in file order (no shuffling): ``data`` if given, else the config's data (``split`` for builtin)."""
    if split is not None and config.data.path.startswith("builtin:"):
        config = config.model_copy(update={"data": config.data.model_copy(update={"split": split})})
    source = build_prompt_source(config, registry, default_cache_dir(config))
    records = read_records(data, dict(config.data.fields)) if data else source.records
    return PromptSource(records, source.template, 1, config.run.seed, source.system_prompt, shuffle=False,
                        origin=data or config.origin)


def config_for_policy(policy: str) -> Path | None:
    """The ``config.yaml`` of the run a policy folder was exported from (``RUN/policy`` -> ``RUN/config.yaml``)."""
    candidate = Path(policy).parent / "config.yaml"
    return candidate if Path(policy).is_dir() and candidate.exists() else None
