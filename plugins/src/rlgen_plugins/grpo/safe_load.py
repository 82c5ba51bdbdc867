"""DeepSpeed checkpoints that load without running code from the files.

``engine.load_checkpoint`` reads every file through ``engine.checkpoint_engine.load``, and
DeepSpeed's TorchCheckpointEngine calls ``torch.load(weights_only=False)``: a crafted
``mp_rank_00_model_states.pt`` in a run folder would run its payload on ``--resume``. The
engine installed here keeps DeepSpeed's save path and loads through ``rlgen.load_tensors``
(``weights_only=True``) with an allow-list of the four plain DeepSpeed classes its ZeRO
optimizer states pickle (constructing them runs no user-chosen code).

With our configuration (no pipeline or MoE modules, optimizer states always loaded) the
engine's load path reads only ``mp_rank_*_model_states.pt`` (through the state-dict loader)
and this rank's ``*zero_pp_rank_*_optim_states.pt`` (``_get_all_zero_checkpoint_state_dicts``),
both through ``checkpoint_engine.load``. DeepSpeed's other ``torch.load`` calls belong to the
universal-checkpoint, zero-to-fp32 and MoE paths; :func:`install` refuses a configuration that
would take the universal one, and the others need model classes this trainer does not build.
"""

from __future__ import annotations

from typing import Any

import rlgen
from rlgen import PluginError


def deepspeed_safe_globals() -> list[Any]:
    """The classes DeepSpeed's ZeRO optimizer state dicts pickle besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _safe_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """TorchCheckpointEngine whose ``load`` is ``torch.load(weights_only=True)`` with an allow-list."""

        def __init__(self, zipfile_serialization: bool) -> None:
            super().__init__(None)
            self.name = "rlgen.SafeTorchCheckpointEngine"
            self.zipfile_serialization = zipfile_serialization
            self.allowed_globals = deepspeed_safe_globals()

        def load(self, path: str, map_location: Any = None) -> Any:
            return rlgen.load_tensors(path, map_location=map_location, allowed_globals=self.allowed_globals)

    return SafeTorchCheckpointEngine


def install(engine: Any, plugin: str) -> None:
    """Swap ``engine.checkpoint_engine`` for the safe one; refuse configs whose load path would bypass it."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise PluginError(
            f"trainer '{plugin}': params.deepspeed_config selects the checkpoint engine {type(current).__name__}; "
            "only DeepSpeed's default (torch) engine can be made to load safely, so remove checkpoint.writer / datastates"
        )
    if engine.load_universal_checkpoint():
        raise PluginError(
            f"trainer '{plugin}': params.deepspeed_config sets checkpoint.load_universal, whose loader unpickles "
            "files with code execution; remove it"
        )
    engine.checkpoint_engine = _safe_engine_class()(current.zipfile_serialization)
