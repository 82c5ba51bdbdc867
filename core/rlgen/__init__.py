"""rlgen: reinforcement learning for text generation, built from plugins.

The names exported here are the public API, and the only one plugins may rely on: bundled
plugins import nothing else from rlgen (a test checks it), so a third-party plugin written
like them keeps working as the core's modules change. docs/api.md lists every name.
"""

from __future__ import annotations

import pluggy

from .advantage import (
    RewardTerm,
    broadcast_to_tokens,
    group_mean,
    group_normalize,
    group_std,
    reward_terms,
    sentence_advantage,
    weighted_sum,
)
from .cli import run_cli
from .compute import Compute, choose_compute, detect_compute, resolve_dtype
from .config import RunConfig, apply_override, load_config
from .data import BuiltinDataset, field_text, read_records
from .discovery import Registry, registry
from .checkpoints import load_tensors
from .errors import CheckpointError, ConfigError, PluginError, RlgenError
from .evaluate import (
    BOOTSTRAP_SAMPLES,
    EvalResult,
    evaluate_policy,
    load_evaluation,
    paired_difference,
    summarize,
    write_evaluation,
)
from .hookspecs import PROJECT_NAME
from .interfaces import AdvantageCombiner, Callback, Params, Plugin, Prompt, RewardProvider, RunContext, Sampler, Trainer
from .logs import configure_logging, get_logger
from .loop import RunResult, train
from .reward import Granularity, RewardResult
from .rollout import Rollout, token_char_offsets
from .warm_start import WarmStartError, make_warm_start

__version__ = "0.1.0"

#: marks a plugin module's function as the implementation of the rlgen hook of the same name
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "PROJECT_NAME",
    "AdvantageCombiner",
    "BuiltinDataset",
    "Callback",
    "CheckpointError",
    "Compute",
    "ConfigError",
    "EvalResult",
    "Granularity",
    "Params",
    "Plugin",
    "PluginError",
    "Prompt",
    "Registry",
    "RewardProvider",
    "RewardResult",
    "RewardTerm",
    "RlgenError",
    "Rollout",
    "RunConfig",
    "RunContext",
    "RunResult",
    "Sampler",
    "Trainer",
    "WarmStartError",
    "apply_override",
    "broadcast_to_tokens",
    "choose_compute",
    "configure_logging",
    "detect_compute",
    "evaluate_policy",
    "field_text",
    "get_logger",
    "group_mean",
    "group_normalize",
    "group_std",
    "hookimpl",
    "load_config",
    "load_evaluation",
    "load_tensors",
    "make_warm_start",
    "paired_difference",
    "read_records",
    "registry",
    "resolve_dtype",
    "reward_terms",
    "run_cli",
    "sentence_advantage",
    "summarize",
    "token_char_offsets",
    "train",
    "weighted_sum",
    "write_evaluation",
]
