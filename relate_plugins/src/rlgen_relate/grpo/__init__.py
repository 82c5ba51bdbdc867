"""``relate.grpo``: the DeepSpeed GRPO trainer of RELATE (paper section 3.4.2, Eq. 6).

Registered under the ``rlgen`` entry point group as ``relate_trainer``. Modules:
:mod:`.loss` (Eq. 6 per token, k3 KL, aggregation modes), :mod:`.batching` (rollout to model
inputs), :mod:`.engine` (DeepSpeed process group, config, schedule), :mod:`.export` (full
weights, LoRA merge, HF folders) and :mod:`.trainer` (the plugin class). Importing this
package does not import deepspeed; ``setup`` does.
"""

from __future__ import annotations

import rlgen

from .trainer import GrpoParams, GrpoTrainer, LoraParams


@rlgen.hookimpl
def rlgen_trainers() -> list[type[rlgen.Trainer]]:
    return [GrpoTrainer]


__all__ = ["GrpoParams", "GrpoTrainer", "LoraParams", "rlgen_trainers"]
