"""rlgen: reinforcement learning for text generation, built from plugins.

The names exported here are the public API that third-party plugins rely on; keep them stable.
"""

from __future__ import annotations

import pluggy

from .advantage import broadcast_to_tokens, group_normalize
from .discovery import Registry, registry
from .hookspecs import PROJECT_NAME
from .checkpoints import load_tensors
from .errors import CheckpointError, ConfigError, PluginError, RlgenError
from .interfaces import AdvantageCombiner, Callback, Params, Plugin, Prompt, RewardProvider, RunContext, Sampler, Trainer
from .reward import Granularity, RewardResult
from .rollout import Rollout, token_char_offsets

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = [
    "AdvantageCombiner",
    "Callback",
    "CheckpointError",
    "ConfigError",
    "Granularity",
    "Params",
    "Plugin",
    "PluginError",
    "Prompt",
    "Registry",
    "RewardProvider",
    "RewardResult",
    "RlgenError",
    "Rollout",
    "RunContext",
    "Sampler",
    "Trainer",
    "broadcast_to_tokens",
    "group_normalize",
    "hookimpl",
    "load_tensors",
    "registry",
    "token_char_offsets",
]
