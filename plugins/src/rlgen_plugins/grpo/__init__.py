"""``grpo``: the DeepSpeed GRPO trainer (RELATE paper section 3.4.2, Eq. 6), for any reward set.

Token-level advantages go straight into the per-token objective, so a combiner that puts credit
on single tokens (``relate.credit``) is trained exactly as it intends. Registered under the
``rlgen`` entry point group as ``standard_trainers``; RELATE configs name it ``relate.grpo``,
an alias kept from when it lived in ``rlgen-relate``. Modules:
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
