"""Prompt data: reading JSONL/Parquet records, rendering prompts, and batching them per step.

Batches depend only on (seed, step, rank), never on what came before, so a resumed run sees
exactly the prompts an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .interfaces import Prompt


@dataclass
class BuiltinDataset:
    """What a plugin returns for ``builtin:NAME`` data: a file and how to turn rows into prompts."""

    path: Path
    prompt_template: str
    system_prompt: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, row)`` of every row of a JSONL or Parquet file (for Parquet, the 1-based row number).

    Bytes that are not UTF-8 and lines that are not a JSON object are reported as ``file:line``.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data file {p} does not exist")
    if p.is_dir():
        raise ConfigError(f"data file {p} is a folder, not a .jsonl or .parquet file")
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ConfigError(f"reading {p} needs pyarrow: pip install pyarrow") from exc
        rows = list(enumerate(pq.read_table(p).to_pylist(), 1))
    else:
        rows = []
        # bytes, decoded line by line, so that a bad byte is reported with its line
        with p.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ConfigError(
                        f"{p}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                        "re-encode the file as UTF-8"
                    ) from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{p}:{lineno}: expected a JSON object per line")
                rows.append((lineno, row))
    if not rows:
        raise ConfigError(f"data file {p} has no rows")
    return rows


def rename_fields(path: str | Path, rows: list[tuple[int, dict[str, Any]]], fields: dict[str, str]) -> list[dict[str, Any]]:
    """Rows with each ``fields`` name (template/reward name -> file column) filled from its column."""
    renamed = []
    for lineno, row in rows:
        out = dict(row)
        for name, column in fields.items():
            if column not in row:
                raise ConfigError(f"{path}:{lineno}: the row has no column '{column}' (data.fields.{name})")
            out[name] = row[column]
        renamed.append(out)
    return renamed


def read_records(path: str | Path, fields: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file as dicts, with ``fields`` renaming columns.

    ``fields`` maps the name the prompt template and rewards use to the file's column name,
    e.g. ``{"query": "search_term"}``.
    """
    return rename_fields(path, read_rows(path), fields or {})


def template_fields(template: str) -> list[str]:
    """Names a ``str.format`` template refers to."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def field_text(value: Any) -> str:
    """A record field as the text prompts show it: lists joined with '; ', anything else str().

    Plugins that embed or match context fields use this too, so a field reads the same
    everywhere (in the prompt, in a reward model's input, in its training logs).
    """
    if isinstance(value, (list, tuple)):
        return "; ".join(map(str, value))
    return str(value)


def render(template: str, record: dict[str, Any]) -> str:
    """Fill ``template`` from ``record`` (each field through :func:`field_text`)."""
    return template.format_map({k: field_text(v) for k, v in record.items()})


class PromptSource:
    """Serves the prompts of each step: a fresh seeded permutation every epoch, sliced by rank."""

    def __init__(
        self,
        records: list[dict[str, Any]],
        prompt_template: str,
        prompts_per_step: int,
        seed: int,
        system_prompt: str | None = None,
        shuffle: bool = True,
        origin: str = "data",
        lines: list[int] | None = None,
    ) -> None:
        """``origin`` names the data in errors (its file); ``lines`` are the records' line numbers in it."""
        lines = lines or list(range(1, len(records) + 1))
        needed = template_fields(prompt_template)
        lacking = [(line, sorted(f for f in needed if f not in r)) for line, r in zip(lines, records)
                   if any(f not in r for f in needed)]
        if lacking:
            names = sorted({f for _, missing in lacking for f in missing})
            shown = ", ".join(str(line) for line, _ in lacking[:5]) + (", ..." if len(lacking) > 5 else "")
            raise ConfigError(
                f"{origin}: data.prompt_template uses {names}, which {len(lacking)} of {len(records)} rows lack "
                f"(line{'s' if len(lacking) > 1 else ''} {shown}; columns of line {lacking[0][0]}: "
                f"{sorted(records[lines.index(lacking[0][0])])}); fix the rows or map columns with data.fields"
            )
        self.lines = lines
        self.origin = origin
        self.records = records
        self.template = prompt_template
        self.system_prompt = system_prompt
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self.shuffle = shuffle

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        if self.shuffle:
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def shuffled_records(self, epoch: int = 0) -> list[dict[str, Any]]:
        """Every record, in the order training visits them in ``epoch``."""
        return [self.records[i] for i in self._order(epoch)]

    def prompt(self, record: dict[str, Any]) -> Prompt:
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": render(self.template, record)})
        return Prompt(messages=messages, meta=dict(record))

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> list[Prompt]:
        """Prompts of 1-based ``step`` for ``rank``: the global batch is split evenly across ranks."""
        n = self.prompts_per_step * world_size
        start = (step - 1) * n
        picked: list[int] = []
        while len(picked) < n:
            epoch, offset = divmod(start + len(picked), len(self.records))
            order = self._order(epoch)
            take = min(n - len(picked), len(self.records) - offset)
            picked.extend(order[offset : offset + take])
        mine = picked[rank * self.prompts_per_step : (rank + 1) * self.prompts_per_step]
        return [self.prompt(self.records[i]) for i in mine]
