"""Hook specifications: the whole surface through which plugins extend rlgen.

Registration hooks return plugin classes that the config picks by name. Lifecycle hooks are
called on every registered plugin module and on every configured callback instance. Resolver
hooks turn ``builtin:NAME`` into local files so that the core never needs to know a model
library or a dataset. A hook implementation may accept any subset of a hook's parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pluggy

if TYPE_CHECKING:
    from .config import RunConfig
    from .data import BuiltinDataset
    from .interfaces import AdvantageCombiner, Callback, RewardProvider, RunContext, Sampler, Trainer
    from .reward import RewardResult
    from .rollout import Rollout
    import torch

PROJECT_NAME = "rlgen"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# -- registration -------------------------------------------------------------------------


@hookspec
def rlgen_reward_providers() -> Iterable[type["RewardProvider"]]:
    """Return the reward provider classes this plugin offers.

    Each class sets ``name`` (unique across installed plugins), ``granularity``
    (``"token"`` or ``"sentence"``), ``description`` and a pydantic ``Params`` model.
    """


@hookspec
def rlgen_advantage_combiners() -> Iterable[type["AdvantageCombiner"]]:
    """Return the advantage combiner classes this plugin offers (e.g. ``grpo``, ``relate.credit``)."""


@hookspec
def rlgen_samplers() -> Iterable[type["Sampler"]]:
    """Return the sampler classes this plugin offers (e.g. ``hf``, ``vllm``)."""


@hookspec
def rlgen_trainers() -> Iterable[type["Trainer"]]:
    """Return the trainer classes this plugin offers (e.g. ``grpo``)."""


@hookspec
def rlgen_callbacks() -> Iterable[type["Callback"]]:
    """Return configurable lifecycle plugin classes (loggers, evaluators) this plugin offers.

    The config's ``callbacks:`` list instantiates them; each instance receives the lifecycle
    hooks below for the duration of the run.
    """


# -- resolvers ----------------------------------------------------------------------------


@hookspec(firstresult=True)
def rlgen_builtin_model(name: str, cache_dir: Path) -> Path | None:
    """Materialise the embedded model ``builtin:<name>`` and return its local folder.

    :param name: the part after ``builtin:`` (e.g. ``tiny-llama``).
    :param cache_dir: a folder the plugin may write converted or generated weights to.
    :return: a folder loadable with ``from_pretrained``, or None if this plugin does not know ``name``.
    """


@hookspec(firstresult=True)
def rlgen_builtin_dataset(name: str, split: str, cache_dir: Path) -> "BuiltinDataset | None":
    """Materialise the embedded dataset ``builtin:<name>`` and describe it.

    :param name: the part after ``builtin:`` (e.g. ``search-ads``).
    :param split: ``train`` or ``eval``.
    :param cache_dir: a folder the plugin may write generated files to.
    :return: a :class:`rlgen.data.BuiltinDataset` (file path and default prompt template), or
        None if this plugin does not know ``name``.
    """


# -- evaluation ---------------------------------------------------------------------------


@hookspec
def rlgen_eval_metrics(
    texts: list[str], meta: list[dict[str, Any]], group: list[int], rewards: dict[str, list[float]], config: "RunConfig"
) -> "dict[str, list[float] | float] | None":
    """Add evaluation metrics for a set of generated completions (``rlgen eval``, ``eval.every`` and ``validation.every``).

    Called once for the whole evaluation set, so set-level measures (diversity, self-BLEU) see
    every completion.

    :param texts: every completion, in order.
    :param meta: the context fields of each completion.
    :param group: index of the context each completion answers.
    :param rewards: each configured reward's sentence-level value per completion.
    :param config: the run configuration.
    :return: metric name -> one value per completion (averaged, with a bootstrap confidence
        interval over contexts), or ``{"values": [...], "weights": [...]}`` with one value and one
        weight >= 0 per completion (the weighted mean sum(w v) / sum(w), with a bootstrap CI over
        contexts: a set measure written as per-completion contributions, or a subset with weight 0
        outside it), or a single number for set-level metrics (no CI); or None. Against a baseline,
        per-completion metrics get paired differences with CIs.
    """


# -- lifecycle ----------------------------------------------------------------------------


@hookspec
def rlgen_on_run_start(config: "RunConfig", context: "RunContext") -> None:
    """Called once after every plugin is set up, before the first step.

    :param config: the validated run configuration.
    :param context: output folder, seed, rank and world size of this process.
    """


@hookspec
def rlgen_on_step_end(
    step: int,
    metrics: dict[str, float],
    rollout: "Rollout",
    rewards: dict[str, "RewardResult"],
    advantages: "torch.Tensor",
) -> None:
    """Called after every training step (on every rank; check ``context.is_main`` to log once).

    :param step: 1-based index of the step just finished.
    :param metrics: every reward's mean, the combiner's and the trainer's metrics, timings.
    :param rollout: the rollout the step trained on.
    :param rewards: each reward's validated result, by reward name.
    :param advantages: the [B, T] advantages the trainer used.
    """


@hookspec
def rlgen_on_checkpoint(step: int, path: Path) -> None:
    """Called after a checkpoint was written completely (the folder is final).

    :param step: the step the checkpoint holds.
    :param path: the checkpoint folder.
    """


@hookspec
def rlgen_on_run_end(step: int, metrics: dict[str, float], output_dir: Path) -> None:
    """Called once when the run ends normally.

    :param step: the last step trained.
    :param metrics: the last step's metrics.
    :param output_dir: the run folder.
    """


def documented_hooks() -> dict[str, Any]:
    """Every hook specification defined here, by name (used by the docs check)."""
    return {name: obj for name, obj in globals().items() if name.startswith("rlgen_") and callable(obj)}
