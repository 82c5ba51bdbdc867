"""Base classes of the plugin kinds: what the loop calls, and nothing more.

Every plugin class declares a unique ``name``, a one-line ``description`` and a pydantic
``Params`` model; the config's ``params:`` block is validated against ``Params`` before any
model is loaded. ``__init__(params)`` must stay cheap; heavy work (loading models) belongs in
``setup(context)``, which the loop calls once the whole config has been validated.
"""

from __future__ import annotations

import abc
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import pydantic
import torch

from .errors import PluginError
from .reward import Granularity, RewardResult
from .rollout import Rollout

if TYPE_CHECKING:
    from .config import RunConfig
    from .discovery import Registry


class Params(pydantic.BaseModel):
    """Default (empty) params model; subclasses add fields. Unknown keys are rejected."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclass
class Prompt:
    """One prompt for the sampler: chat messages plus the metadata rewards may read."""

    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The prompt as plain text, for models without a chat template."""
        return "\n\n".join(m["content"] for m in self.messages)


@dataclass
class RunContext:
    """What a plugin may know about the run it is part of (given to ``setup``)."""

    config: "RunConfig"
    registry: "Registry"
    output_dir: Path
    cache_dir: Path
    seed: int
    rank: int = 0
    world_size: int = 1
    #: torch CPU threads this process uses (``run.threads`` resolved; see docs/config.md)
    threads: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def resolve_model(self, spec: str) -> str:
        """Turn ``builtin:NAME`` into a local folder through the ``rlgen_builtin_model`` hook."""
        return self.registry.resolve_model(spec, self.cache_dir)


def _installed(module: str) -> bool:
    """True when ``module`` is a real installed package: a stray folder of that name on
    sys.path (a namespace package, no origin) does not count."""
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin is not None


class Plugin(abc.ABC):
    """Common surface of every plugin class."""

    name: ClassVar[str]
    #: other names configs may use for this plugin (e.g. the name it had before a rename)
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    Params: ClassVar[type[pydantic.BaseModel]] = Params
    #: import names this plugin needs beyond its distribution's dependencies (e.g. an extra)
    requires: ClassVar[tuple[str, ...]] = ()
    #: how to install what ``requires`` names, shown when it is missing
    install_hint: ClassVar[str] = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this plugin cannot run here (a missing optional package), or None."""
        missing = [mod for mod in cls.requires if not _installed(mod)]
        if not missing:
            return None
        hint = f"; install with: {cls.install_hint}" if cls.install_hint else ""
        return f"needs {', '.join(missing)}, which is not installed{hint}"

    def __init__(self, params: pydantic.BaseModel | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def check(self, context: RunContext) -> None:
        """Raise ConfigError (naming the key) for anything ``setup`` would trip on: a missing model
        folder, a tokenizer that cannot load. Cheap: no weights are loaded; ``rlgen validate``,
        train, eval and generate call it before anything is written."""

    def setup(self, context: RunContext) -> None:
        """Load models and other heavy state; called once before the first step."""

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a resume (e.g. a rolling window); tensors, numbers, strings, lists, dicts."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def close(self) -> None:
        """Release resources at the end of the run."""


class RewardProvider(Plugin):
    """Scores completions. ``granularity`` says whether ``score`` returns [B] or [B, T] values."""

    granularity: ClassVar[Granularity] = "sentence"

    @abc.abstractmethod
    def score(self, rollout: Rollout) -> RewardResult:
        """Return [B] values (sentence) or [B, T] values zero on padding (token)."""


class AdvantageCombiner(Plugin):
    """Turns every reward of a rollout into one float advantage per completion token."""

    @abc.abstractmethod
    def combine(
        self, rollout: Rollout, rewards: dict[str, RewardResult], weights: dict[str, float]
    ) -> torch.Tensor:
        """Return advantages [B, T], zero where ``rollout.completion_mask`` is false."""

    def metrics(self) -> dict[str, float]:
        """Numbers about the last ``combine`` (e.g. share of zero-variance groups)."""
        return {}


class Sampler(Plugin):
    """Generates ``group_size`` completions per prompt."""

    @abc.abstractmethod
    def generate(self, prompts: list[Prompt], group_size: int, seed: int) -> Rollout:
        """Sample ``group_size`` completions for each prompt; samples of prompt k get group k."""

    @abc.abstractmethod
    def sync_weights(self, trainer: "Trainer") -> dict[str, float]:
        """Make the next ``generate`` use the trainer's current policy; return timing metrics."""

    def max_prompt_tokens(self, context: RunContext) -> int | None:
        """The most prompt tokens the model can take with room left for a completion, or None when unknown.

        Called before ``setup`` (by ``rlgen validate`` and train), so it must not load weights.
        """
        return None

    def prompt_token_counts(self, context: RunContext, prompts: list[Prompt]) -> list[int] | None:
        """Tokens each prompt takes as ``generate`` renders it, or None when this sampler cannot tell.

        Called before ``setup``, so it must not load weights; a tokenizer is fine. With
        ``data.long_prompts: truncate`` the sampler itself keeps each prompt's last
        ``min(data.max_prompt_tokens, max_prompt_tokens())`` tokens.
        """
        return None


class Trainer(Plugin):
    """Owns the policy and its optimiser; one ``step`` per rollout."""

    @abc.abstractmethod
    def step(self, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """One policy update on this rollout with advantages [B, T]; return metrics."""

    def policy_module(self) -> torch.nn.Module | None:
        """The live policy module when samplers in this process may share it, else None."""
        return None

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full, unsharded weights by their model names (LoRA merged), for samplers that copy them."""
        raise PluginError(f"trainer {self.name!r} cannot export weights")

    def save_checkpoint(self, directory: Path) -> None:
        """Write everything needed to resume into ``directory`` (created by the loop)."""
        raise PluginError(f"trainer {self.name!r} cannot save checkpoints")

    def load_checkpoint(self, directory: Path) -> None:
        raise PluginError(f"trainer {self.name!r} cannot load checkpoints")

    def export_policy(self, directory: Path) -> None:
        """Write a servable copy of the policy (e.g. HF ``save_pretrained`` safetensors)."""
        raise PluginError(f"trainer {self.name!r} cannot export the policy")


class Callback(Plugin):
    """A configurable lifecycle plugin (logger, evaluator, ...).

    Subclasses implement any lifecycle hook of :mod:`rlgen.hookspecs` as a method decorated
    with ``@rlgen.hookimpl``; the loop registers the configured instances for the run.
    """
