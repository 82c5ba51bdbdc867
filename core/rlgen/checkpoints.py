"""Checkpoint folders that are never half-written.

A checkpoint is written into ``step-NNNNNN.tmp`` and renamed to ``step-NNNNNN`` only when
complete, so a run killed mid-write leaves a ``.tmp`` folder that resume ignores.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
COMPLETE_MARKER = "loop.json"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def staging_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}.tmp"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished checkpoint under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / COMPLETE_MARKER).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def finish(staging: Path, final: Path, loop_state: dict[str, Any], plugin_states: dict[str, Any]) -> None:
    """Write the loop's own files into ``staging`` and move it into place atomically."""
    torch.save(plugin_states, staging / "plugins.pt")
    # the marker goes last: its presence means everything else is there
    (staging / COMPLETE_MARKER).write_text(json.dumps(loop_state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(loop state, plugin states) of a finished checkpoint; tensors load with weights_only=True."""
    loop_state = json.loads((folder / COMPLETE_MARKER).read_text())
    plugin_states = torch.load(folder / "plugins.pt", weights_only=True)
    return loop_state, plugin_states


def prune(root: Path, keep: int) -> None:
    for _, folder in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
