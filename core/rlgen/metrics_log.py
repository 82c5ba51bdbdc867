"""``metrics.jsonl``: one JSON object per step, appended as the run goes.

A power loss can leave the last line half-written; resume trims it with a warning rather than
failing on it. Any other unreadable line is damage the user has to see, named by file:line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .errors import RlgenError


def read_until(path: Path, step: int, warn: Callable[..., Any]) -> list[str]:
    """The lines of ``path`` for steps <= ``step``, as written; a torn last line is dropped through ``warn``."""
    if not path.exists():
        return []
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError as exc:
        raise RlgenError(f"{path}: unreadable ({exc})") from None
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            line_step = row["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                warn("trimmed a torn last line of metrics.jsonl (the run was stopped mid-write)",
                     file=str(path), line=number, text=line[:80])
                break
            raise RlgenError(f"{path}:{number}: not a metrics line (JSON with a 'step'); fix or remove the line") from None
        if line_step <= step:
            kept.append(line)
    return kept


def rewrite(path: Path, lines: list[str]) -> None:
    """Replace ``path`` with ``lines`` in one rename, so a kill now cannot lose the kept history."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    os.replace(tmp, path)
