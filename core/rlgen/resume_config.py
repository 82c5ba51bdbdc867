"""Resume only with the config a run was started with, up to keys that do not change what it computes.

A resumed run is trusted to be the run that was started: same model, data, seed, group size,
rewards, combiner, sampler and trainer. ``--resume`` compares the run folder's ``config.yaml``
with the new config; a change to any key outside :data:`HARMLESS` is refused with the changed
keys, unless the user passes ``--allow-config-change``. Every accepted change (harmless or
overridden) is appended to ``RUN/config_changes.json``, so the folder says what it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .config import RunConfig
from .errors import ConfigError
from .logs import get_logger

log = get_logger("rlgen.resume_config")

#: keys (and the sections under them) a resume may change: they decide how long a run goes,
#: where its files are and how it is observed, never what a step computes. run.threads is not
#: one of them: the number of CPU threads changes the order of float sums, so the weights drift.
#: run.reuse_freed_memory is: it decides where malloc finds memory, and torch aligns every tensor alike.
HARMLESS = (
    "run.steps", "run.time_limit_s", "run.checkpoint_every", "run.keep_checkpoints", "run.save_final", "run.output_dir",
    "run.cache_dir", "run.reuse_freed_memory", "callbacks", "eval", "validation",
)
CHANGES_FILE = "config_changes.json"
_ABSENT = "(absent)"


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}", out)
    else:
        out[prefix] = value


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf that differs; a missing leaf reads ``(absent)``."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(old, "", a)
    _flatten(new, "", b)
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def is_harmless(key: str) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HARMLESS)


def _stored_config(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the run's stored config ({exc}); pass --allow-config-change to resume anyway") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the run's stored config is not a mapping; pass --allow-config-change to resume anyway")
    try:  # defaults of keys added since the run started are not changes
        return RunConfig.model_validate(raw).model_dump(mode="json")
    except pydantic.ValidationError:
        return raw


def check_resume_config(config: RunConfig, output_dir: Path, *, allow_change: bool, step: int | None) -> dict[str, tuple[Any, Any]]:
    """Refuse to resume ``output_dir`` with a config that changes its trajectory (unless ``allow_change``).

    Returns the accepted changes, which are also appended to ``RUN/config_changes.json``; nothing is
    written when the stored config is missing (a run killed before it wrote one) or equal.
    """
    stored = output_dir / "config.yaml"
    if not stored.is_file():
        return {}
    old = _stored_config(stored)
    changes = config_changes(old, config.model_dump(mode="json"))
    if not changes:
        return {}
    trajectory = {k: v for k, v in changes.items() if not is_harmless(k)}
    shown = "; ".join(f"{k}: {json.dumps(o)} -> {json.dumps(n)}" for k, (o, n) in trajectory.items())
    if trajectory and not allow_change:
        raise ConfigError(
            f"{stored}: --resume with a config that changes the run's trajectory: {shown} "
            f"(keys such as run.steps may change; pass --allow-config-change to resume anyway, recorded in "
            f"{output_dir / CHANGES_FILE})"
        )
    if trajectory:
        log.warning("resuming with a changed trajectory (--allow-config-change)", changes=shown,
                    recorded=str(output_dir / CHANGES_FILE))
    else:
        log.info("resuming with harmless config changes", changes=sorted(changes))
    path = output_dir / CHANGES_FILE
    try:
        history = json.loads(path.read_text()) if path.is_file() else []
    except ValueError:
        history = []
    history.append({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_after_step": step,
        "allow_config_change": bool(trajectory),
        "changes": {k: {"old": o, "new": n} for k, (o, n) in changes.items()},
    })
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(history, indent=2))
    tmp.replace(path)
    return changes
