"""The run configuration: one YAML file, validated by pydantic, plugin params included.

Validation happens in two passes: the file's own shape (``load_config``), then each plugin's
``params`` block against that plugin's ``Params`` model (``plan_run``). Both pass before a
single model is loaded or a file is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError, PluginError
from .interfaces import Plugin
from .discovery import Registry


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    path: str = Field("builtin:tiny-llama", description="builtin:NAME, a Hugging Face model id, or a local folder")
    tokenizer: str | None = Field(None, description="tokenizer id or folder; defaults to the model's")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="weights dtype; auto: bfloat16 on a CUDA device that supports it, else float32 (docs/gpu.md)"
    )
    trust_remote_code: bool = Field(False, description="allow model code from the model folder; off unless you trust it")


class DataConfig(_Section):
    path: str = Field(..., description="builtin:NAME, or a .jsonl / .parquet file of prompt records")
    split: str = Field("train", description="split of a builtin dataset")
    prompt_template: str | None = Field(
        None, description="str.format template over the record's fields; builtin datasets bring a default"
    )
    system_prompt: str | None = Field(None, description="optional system message before the prompt")
    fields: dict[str, str] = Field(default_factory=dict, description="template/reward field name -> column in the file")
    prompts_per_step: int = Field(4, ge=1, description="prompts per step and rank; the batch is this x group_size")
    oversample: int = Field(
        1, ge=1, description="sample this many times prompts_per_step prompts a step and train on the prompts_per_step "
        "groups whose weighted reward spreads most (dynamic sampling, docs/strategies.md); 1: train on every sample"
    )
    oversample_rank: Literal["total", "per_reward"] = Field(
        "total", description="how oversampled groups are ranked: total (spread of the weighted reward, Eq. 2) or "
        "per_reward (each reward's spread in the group over its spread in the batch, weighted and summed)"
    )
    shuffle: bool = Field(True, description="reshuffle the prompts every epoch (seeded)")
    limit: int | None = Field(None, ge=1, description="use only the first N records")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="most tokens a rendered prompt may take (default: the model's context less the completion budget)"
    )
    long_prompts: Literal["error", "skip", "truncate"] = Field(
        "error", description="prompts over the limit: error (validate and train refuse them, naming file:line), "
        "skip (dropped, with a count), truncate (their first tokens dropped, keeping the end the model answers)"
    )

    @property
    def sampled_prompts_per_step(self) -> int:
        """Prompts sampled per step and rank: ``prompts_per_step`` of them are trained on."""
        return self.prompts_per_step * self.oversample


class PluginRef(_Section):
    name: str = Field(..., description="registered plugin name (see `rlgen plugins`)")
    params: dict[str, Any] = Field(default_factory=dict, description="validated against the plugin's Params")


class RewardRef(PluginRef):
    weight: float = Field(1.0, description="weight w_k of this reward in the combined advantage")
    alias: str | None = Field(None, description="name in metrics and the combiner, to use one provider twice")

    @property
    def key(self) -> str:
        return self.alias or self.name


class RunSection(_Section):
    steps: int = Field(100, ge=1, description="training steps")
    seed: int = Field(0, description="seeds every RNG; sampling seeds derive from it per step and rank")
    output_dir: str = Field("runs/default", description="run folder: metrics.jsonl, checkpoints, policy export")
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every K steps (0: only at the end)")
    save_final: bool = Field(True, description="checkpoint and export the policy when the run ends")
    keep_checkpoints: int = Field(2, ge=1, description="how many step checkpoints to keep")
    time_limit_s: float | None = Field(
        None, gt=0, description="wall-clock limit of the training steps, in seconds (None: none). No step starts that "
        "would end past it by the longest step so far; the run then checkpoints and exports as after its last step, "
        "and --resume with a larger limit or none goes on (a job scheduler's time slot, a fixed benchmark budget)"
    )
    threads: int | Literal["auto"] = Field(
        "auto", description="torch CPU threads per process; auto: OMP_NUM_THREADS when set, else the cores this "
        "process may use divided by the ranks on this machine"
    )

    @pydantic.field_validator("threads")
    @classmethod
    def _positive_threads(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or auto")
        return value
    cache_dir: str | None = Field(None, description="where builtin models/data are materialised (default RLGEN_CACHE_DIR or ~/.cache/rlgen)")
    reuse_freed_memory: bool = Field(
        True, description="keep the memory a step frees in the process for the next step (glibc malloc without mmap "
        "blocks or trimming; no effect elsewhere): a CPU step then stops faulting in its large buffers afresh, about "
        "7% of a step on the speed benchmark, for more peak RSS (0.1 GB there; 0.7 GB in make demo, whose stages share "
        "one process; docs/speed.md)"
    )
    async_rollouts: Literal[0, 1] = Field(
        0, description="rollouts generated ahead of training. 0: on-policy, each rollout is sampled with the weights "
        "it trains (generation and update take turns). 1: a sampler process generates rollout k+1 with the weights "
        "of step k-1 while the trainer updates on rollout k, and pi_old of Eq. 6 is the sampler's own log-probs "
        "(one step off-policy; one rank only; docs/async.md)"
    )


class EvalSection(_Section):
    split: str = Field("eval", description="split of a builtin dataset to evaluate on")
    data: str | None = Field(None, description="a .jsonl / .parquet file of eval contexts instead of the split")
    limit: int | None = Field(64, ge=1, description="evaluate on the first N contexts (None: all)")
    samples_per_context: int = Field(1, ge=1, description="completions per eval context")
    batch_prompts: int = Field(8, ge=1, description="contexts per generation call (more is faster on a CPU, up to memory)")
    every: int = Field(0, ge=0, description="evaluate during training every K steps (0: never)")


class ValidationSection(_Section):
    """Held-out contexts scored during training, and the policy that scored best on them kept apart.

    The same evaluation as ``rlgen eval`` (fresh reward instances, the same sampling seeds each time), on
    contexts that must not be the ``eval`` contexts: selecting a policy on its test set would make the test
    say nothing."""

    data: str | None = Field(None, description="a .jsonl / .parquet file of held-out contexts")
    split: str | None = Field(None, description="or: a split of a builtin dataset (not the eval split)")
    limit: int | None = Field(64, ge=1, description="validate on the first N contexts (None: all)")
    samples_per_context: int = Field(1, ge=1, description="completions per context")
    batch_prompts: int = Field(8, ge=1, description="contexts per generation call")
    every: int = Field(0, ge=0, description="validate every K steps and after the last step (0: never)")
    keep_best: str | None = Field(
        None, description="a metric of the evaluation (e.g. relate/compliance_rate, reward/relate.format): the policy "
        "with its best mean so far is exported to RUN/best_policy, with the step and value in selection.json"
    )
    mode: Literal["max", "min"] = Field("max", description="whether a larger or a smaller keep_best value is better")

    @pydantic.model_validator(mode="after")
    def _complete(self) -> "ValidationSection":
        if self.every and self.data is None and self.split is None:
            raise ValueError("validation.every needs validation.data or validation.split")
        if self.keep_best is not None and not self.every:
            raise ValueError("validation.keep_best needs validation.every > 0")
        return self


class WarmStartSection(_Section):
    """Supervised fine-tuning on the policy's own accepted samples before RL (rejection sampling fine-tuning).

    The paper's RL starts from a cold-start initialisation, not from a general model. This section builds one
    from the run's own parts: the sampler draws ``samples_per_prompt`` completions for ``prompts`` training
    contexts, the run's rewards score them, and the best accepted completions of each context become the
    fine-tuning data (RAFT, Dong et al. 2023; Llama 2's rejection sampling). RL then starts from, and keeps its
    KL term to, the fine-tuned policy (``RUN/warm_start/policy``). With ``rounds`` > 1 the fine-tuned policy samples
    and is fine-tuned again. See docs/warm-start.md."""

    prompts: int = Field(0, ge=0, description="training contexts to sample on (0: no warm start)")
    samples_per_prompt: int = Field(8, ge=1, description="completions drawn per context")
    batch_prompts: int = Field(8, ge=1, description="contexts per generation call")
    accept: dict[str, float] = Field(
        default_factory=dict, description="reward key -> the least sentence-level score a completion needs to be "
        "kept (every listed reward must hold); empty: every completion qualifies"
    )
    keep_per_prompt: int = Field(1, ge=1, description="accepted completions kept per context, best weighted reward first")
    epochs: int = Field(2, ge=1, description="passes over the kept completions")
    batch_size: int = Field(24, ge=1, description="kept completions per optimizer update")
    trainer_params: dict[str, Any] = Field(
        default_factory=dict, description="merged over trainer.params for the warm start only (e.g. the learning "
        "rate, or beta 0: the KL to the base would hold back exactly what this stage is for)"
    )
    rounds: int = Field(
        1, ge=1, description="sample-and-fine-tune rounds; round r > 1 samples the next `prompts` contexts with round "
        "r-1's policy and fine-tunes that policy further (ReST, Gulcehre et al. 2023)"
    )


class RunConfig(_Section):
    """A whole run. See docs/config.md for every key."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    group_size: int = Field(5, ge=1, description="G: completions sampled per prompt")
    sampler: PluginRef = Field(default_factory=lambda: PluginRef(name="hf"))
    rewards: list[RewardRef] = Field(..., min_length=1, description="reward providers with their weights")
    advantage: PluginRef = Field(default_factory=lambda: PluginRef(name="grpo"))
    trainer: PluginRef = Field(default_factory=lambda: PluginRef(name="grpo"))
    callbacks: list[PluginRef] = Field(default_factory=list, description="lifecycle plugins (loggers, evaluators)")
    eval: EvalSection = Field(default_factory=EvalSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    warm_start: WarmStartSection = Field(default_factory=WarmStartSection)
    run: RunSection = Field(default_factory=RunSection)

    #: where the config came from, for error messages (not part of the schema)
    _origin: str = pydantic.PrivateAttr("config")

    @property
    def origin(self) -> str:
        return self._origin


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _pydantic_message(origin: str, exc: pydantic.ValidationError, prefix: str = "", plugin: str | None = None) -> str:
    lines = []
    for err in exc.errors():
        key = _format_loc((prefix,) + tuple(err["loc"]) if prefix else tuple(err["loc"]))
        what = f"plugin '{plugin}': " if plugin else ""
        if err["type"] == "extra_forbidden":
            lines.append(f"{origin}: {what}unknown key '{key}'")
        else:
            lines.append(f"{origin}: {what}key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def apply_override(raw: dict[str, Any], assignment: str, origin: str = "--set") -> None:
    """Apply ``a.b.c=value`` to ``raw`` in place; the value is parsed as YAML; list items by index.

    Each mapping and list on the key's path below ``raw`` is replaced by a copy before it is changed: a YAML alias
    (``*layout`` after ``&layout``) loads as the very object of its anchor, so changing it where it stands would
    change every place that shares it."""
    if "=" not in assignment:
        raise ConfigError(f"{origin}: '{assignment}' is not KEY=VALUE")
    key, text = assignment.split("=", 1)
    value = yaml.safe_load(text) if text != "" else ""
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{origin}: '{key}': '{part}' is not an index of a list of {len(node)}")
            slot: Any = int(part)
            child = node[slot]
        elif isinstance(node, dict):
            slot, child = part, node.get(part, {})
        else:
            raise ConfigError(f"{origin}: '{key}': '{'.'.join(parts[:i])}' is not a mapping")
        if i == len(parts) - 1:
            node[slot] = value
        else:
            child = _copied(child)
            node[slot] = child
            node = child


def _copied(node: Any) -> Any:
    """A shallow copy of a mapping or list (the next step down an override's path); anything else as it is."""
    return dict(node) if isinstance(node, dict) else list(node) if isinstance(node, list) else node


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read, override and validate a run configuration (its own shape; plugins come in :func:`plan_run`)."""
    if isinstance(source, dict):
        raw, origin = yaml.safe_load(yaml.safe_dump(source)), "config"
        base = Path.cwd()
    else:
        path = Path(source)
        origin = str(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
        base = path.parent
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping")
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        config = RunConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(_pydantic_message(origin, exc)) from None
    config._origin = origin
    # relative data paths are relative to the config file, like any include
    data_path = config.data.path
    if not data_path.startswith("builtin:") and not Path(data_path).is_absolute() and not isinstance(source, dict):
        candidate = base / data_path
        if candidate.exists() and not Path(data_path).exists():
            config.data.path = str(candidate)
    return config


@dataclass
class PlannedPlugin:
    """A plugin chosen by the config, with validated params."""

    key: str  # config location, e.g. rewards.0
    name: str
    cls: type[Plugin]
    params: pydantic.BaseModel
    weight: float = 1.0
    alias: str | None = None

    def build(self) -> Plugin:
        return self.cls(self.params)


@dataclass
class RunPlan:
    config: RunConfig
    sampler: PlannedPlugin
    rewards: list[PlannedPlugin]
    advantage: PlannedPlugin
    trainer: PlannedPlugin
    callbacks: list[PlannedPlugin]
    #: the trainer with ``warm_start.trainer_params`` merged over its params (None: no warm start)
    warm_start_trainer: PlannedPlugin | None = None


def validate_params(cls: type[Plugin], raw: dict[str, Any], *, origin: str, key: str, name: str) -> pydantic.BaseModel:
    """Validate a ``params`` block against ``cls.Params``; unknown keys are errors whatever the model's config."""
    model = cls.Params
    known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    unknown = sorted(set(raw) - known)
    if unknown:
        fields = ", ".join(sorted(model.model_fields)) or "none"
        raise ConfigError(f"{origin}: plugin '{name}': unknown key '{key}.params.{unknown[0]}' (its params: {fields})")
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(_pydantic_message(origin, exc, prefix=f"{key}.params", plugin=name)) from None


def plan_run(config: RunConfig, registry: Registry) -> RunPlan:
    """Resolve every plugin the config names and validate its params."""
    registry.check()
    origin = config.origin

    def plan(kind: str, ref: PluginRef, key: str) -> PlannedPlugin:
        try:
            cls = registry.get(kind, ref.name)
        except PluginError as exc:
            raise ConfigError(f"{origin}: {key}.name: {exc}") from None
        params = validate_params(cls, ref.params, origin=origin, key=key, name=ref.name)
        if isinstance(ref, RewardRef):
            return PlannedPlugin(key, ref.name, cls, params, ref.weight, ref.alias)
        return PlannedPlugin(key, ref.name, cls, params)

    rewards = [plan("reward", r, f"rewards.{i}") for i, r in enumerate(config.rewards)]
    keys = [r.key for r in config.rewards]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"{origin}: reward '{dupes[0]}' is listed twice; give one of them an 'alias'")
    warm = config.warm_start
    warm_trainer = None
    if warm.prompts:
        unknown = sorted(set(warm.accept) - set(keys))
        if unknown:
            raise ConfigError(f"{origin}: key 'warm_start.accept.{unknown[0]}' names no configured reward "
                              f"(rewards: {', '.join(keys)})")
        merged = PluginRef(name=config.trainer.name, params={**config.trainer.params, **warm.trainer_params})
        try:
            warm_trainer = plan("trainer", merged, "trainer")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (with warm_start.trainer_params merged over it)") from None
    return RunPlan(
        config=config,
        sampler=plan("sampler", config.sampler, "sampler"),
        rewards=rewards,
        advantage=plan("advantage", config.advantage, "advantage"),
        trainer=plan("trainer", config.trainer, "trainer"),
        callbacks=[plan("callback", c, f"callbacks.{i}") for i, c in enumerate(config.callbacks)],
        warm_start_trainer=warm_trainer,
    )


def config_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON schema of the run config; with a registry, each plugin's params schema is attached."""
    schema = RunConfig.model_json_schema()
    if registry is not None:
        plugins: dict[str, Any] = {}
        for info in registry.infos:
            if info.cls is not None and info.status in ("ok", "unavailable"):
                plugins[f"{info.kind}:{info.name}"] = info.cls.Params.model_json_schema()
        schema["x-rlgen-plugin-params"] = plugins
    return schema
