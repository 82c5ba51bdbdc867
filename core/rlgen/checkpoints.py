"""Checkpoint folders that are never half-written, verified before use, and loaded without running code.

A checkpoint is written into ``step-NNNNNN.tmp`` and renamed to ``step-NNNNNN`` only when
complete, so a run killed mid-write leaves a ``.tmp`` folder that resume ignores. The last
file written before the rename is ``manifest.json``: size and sha256 of every other file.
Resume verifies the newest checkpoint against it and falls back to an older one when a disk,
a copy or a power loss damaged it. Tensors load only through :func:`load_tensors`
(``torch.load(weights_only=True)``), so a crafted pickle in a run folder is refused, not run.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .errors import CheckpointError
from .logs import get_logger

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
LOOP_STATE = "loop.json"
PLUGIN_STATES = "plugins.pt"

log = get_logger("rlgen.checkpoints")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def staging_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}.tmp"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every renamed (finished) checkpoint under ``root``, oldest first; not verified."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


# -- safe loading -------------------------------------------------------------------------------


def load_tensors(path: Path | str, *, map_location: Any = None, allowed_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(weights_only=True)`` of one file, with ``allowed_globals`` added to torch's allow-list.

    Tensors, containers and plain values load; a pickle that asks for any other callable or
    class (``os.system``, ``builtins.exec``, ...) is refused before anything runs. Every failure,
    refused or unreadable, is a :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the offending callable as "GLOBAL module.name"; its advice to allow-list it is not for users
        asked = re.search(r"GLOBAL (\S+)", str(exc))
        detail = f"Unsupported global: {asked.group(1)}" if asked else str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused to load: the file asks to run code or build objects outside the safe allow-list "
            f"({detail}); it was not written by rlgen as it is now, or was tampered with"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def load_json(path: Path) -> Any:
    """JSON from a checkpoint file; a missing or torn file is a :class:`CheckpointError` naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


# -- manifest ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Record relative path, size and sha256 of every file under ``folder`` in ``manifest.json``."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))


def damage(folder: Path) -> list[str]:
    """What is wrong with a finished checkpoint, one line per file (empty: intact)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(listed, dict):
            return [f"{MANIFEST}: unknown format {manifest.get('format')!r}"]
    except FileNotFoundError:
        return [f"{MANIFEST}: missing (written by an rlgen without manifests, or removed)"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{MANIFEST}: unreadable ({type(exc).__name__})"]
    problems = []
    for rel, want in sorted(listed.items()):
        path = folder / rel
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if size != want.get("size"):
            problems.append(f"{rel}: {size} bytes, the manifest says {want.get('size')}")
        elif _sha256(path) != want.get("sha256"):
            problems.append(f"{rel}: contents changed (sha256 differs from the manifest)")
    on_disk = {p.relative_to(folder).as_posix() for p in _files(folder)}
    problems += [f"{rel}: not in the manifest" for rel in sorted(on_disk - set(listed))]
    return problems


def newest_intact(root: Path, warn: Callable[..., Any] | None = None) -> tuple[int, Path] | None:
    """The newest checkpoint that matches its manifest, or None when ``root`` holds none at all.

    Each damaged newer one is reported through ``warn`` (folder and file); when checkpoints exist
    but none is intact, a :class:`CheckpointError` lists what is wrong with each.
    """
    warn = warn or log.warning
    found = complete_checkpoints(root)
    reports = []
    for step, folder in reversed(found):
        problems = damage(folder)
        if not problems:
            return step, folder
        reports.append(f"{folder}: " + "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
        warn("damaged checkpoint skipped", folder=str(folder), problems=problems[:5])
    if reports:
        raise CheckpointError(
            f"no intact checkpoint to resume from in {root}:\n  " + "\n  ".join(reports)
            + "\nrestore the run folder from a copy, or start a new run in another folder"
        )
    return None


# -- write and read ---------------------------------------------------------------------------------


def finish(staging: Path, final: Path, loop_state: dict[str, Any], plugin_states: dict[str, Any]) -> None:
    """Write the loop's own files and the manifest into ``staging``, then move it into place atomically."""
    torch.save(plugin_states, staging / PLUGIN_STATES)
    (staging / LOOP_STATE).write_text(json.dumps(loop_state, indent=2))
    # the manifest goes last: it vouches for everything written before it
    write_manifest(staging)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(loop state, plugin states) of a verified checkpoint."""
    loop_state = load_json(folder / LOOP_STATE)
    plugin_states = load_tensors(folder / PLUGIN_STATES)
    if not isinstance(loop_state, dict) or not isinstance(loop_state.get("step"), int):
        raise CheckpointError(f"{folder / LOOP_STATE}: no integer 'step'")
    if not isinstance(plugin_states, dict):
        raise CheckpointError(f"{folder / PLUGIN_STATES}: not a dict of plugin states")
    return loop_state, plugin_states


def prune(root: Path, keep: int) -> None:
    for _, folder in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def agree_across_ranks(step: int) -> int:
    """Rank 0's choice of checkpoint step (-1: none intact) on every rank, so all ranks load the same one."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return step
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([step], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())
