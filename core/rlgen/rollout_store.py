"""A rollout on disk as safetensors + JSON, so a checkpoint can carry the rollout that was in flight.

With ``run.async_rollouts: 1`` the rollout of step k+1 is sampled with the weights of step k-1;
after a checkpoint at step k those weights are gone, so the rollout itself is saved and an
exact resume trains on it. Nothing here unpickles: tensors go to safetensors, everything else
(texts, metadata, extras) to JSON, and a value JSON cannot hold is refused when saving.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .rollout import Rollout

TENSORS = "rollout.safetensors"
FIELDS = "rollout.json"
FORMAT = 1
_TENSOR_FIELDS = ("completion_ids", "completion_mask", "group", "prompt_ids", "prompt_mask", "token_offsets", "logprobs")
_EXTRA_TENSOR = "extras/"


def _check_json(value: Any, where: str) -> None:
    """Refuse what JSON would change or cannot hold (tuples come back as lists; that is accepted)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return  # Python's json writes and reads NaN and Infinity back unchanged
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: key {k!r} is not a string; a checkpoint cannot store it in JSON")
            _check_json(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(f"{where} is a {type(value).__name__}; a checkpoint stores only tensors and JSON values")


def save_rollout(rollout: Rollout, folder: Path, info: dict[str, Any] | None = None) -> None:
    """Write ``rollout`` (and ``info``, JSON about it, e.g. its step) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(rollout, name).detach().cpu().contiguous().clone()
               for name in _TENSOR_FIELDS if getattr(rollout, name) is not None}
    extras = {}
    for key, value in rollout.extras.items():
        if isinstance(value, torch.Tensor):
            tensors[_EXTRA_TENSOR + key] = value.detach().cpu().contiguous().clone()
        else:
            _check_json(value, f"Rollout.extras[{key!r}]")
            extras[key] = value
    fields = {"format": FORMAT, "texts": rollout.texts, "prompt_texts": rollout.prompt_texts, "meta": rollout.meta,
              "temperature": rollout.temperature, "staleness": rollout.staleness, "extras": extras,
              "info": info or {}}
    _check_json(fields["meta"], "Rollout.meta")
    save_file(tensors, str(folder / TENSORS))
    (folder / FIELDS).write_text(json.dumps(fields))


def load_rollout(folder: Path) -> tuple[Rollout, dict[str, Any]]:
    """(rollout, info) as :func:`save_rollout` wrote them; a torn or foreign folder is a CheckpointError."""
    try:
        fields = json.loads((folder / FIELDS).read_text())
        tensors = load_file(str(folder / TENSORS))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{folder}: unreadable rollout ({type(exc).__name__}: {exc})") from None
    if not isinstance(fields, dict) or fields.get("format") != FORMAT:
        raise CheckpointError(f"{folder / FIELDS}: not a rollout of format {FORMAT}")
    extras = dict(fields["extras"])
    extras.update({k[len(_EXTRA_TENSOR):]: v for k, v in tensors.items() if k.startswith(_EXTRA_TENSOR)})
    try:
        rollout = Rollout(
            texts=fields["texts"], prompt_texts=fields["prompt_texts"], meta=fields["meta"],
            temperature=fields["temperature"], staleness=fields["staleness"], extras=extras,
            **{name: tensors.get(name) for name in _TENSOR_FIELDS},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{folder}: not a valid rollout ({type(exc).__name__}: {exc})") from None
    return rollout, dict(fields.get("info") or {})
