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


def read_records(path: str | Path, fields: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file as dicts, with ``fields`` renaming columns.

    ``fields`` maps the name the prompt template and rewards use to the file's column name,
    e.g. ``{"query": "search_term"}``.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data file {p} does not exist")
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ConfigError(f"reading {p} needs pyarrow: pip install pyarrow") from exc
        rows = pq.read_table(p).to_pylist()
    else:
        rows = []
        with p.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise ConfigError(f"{p}:{lineno}: expected a JSON object per line")
                rows.append(row)
    if not rows:
        raise ConfigError(f"data file {p} has no rows")
    if fields:
        renamed = []
        for i, row in enumerate(rows, 1):
            out = dict(row)
            for name, column in fields.items():
                if column not in row:
                    raise ConfigError(f"{p}: row {i} has no column '{column}' (data.fields.{name})")
                out[name] = row[column]
            renamed.append(out)
        rows = renamed
    return rows


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
    ) -> None:
        missing = sorted({f for f in template_fields(prompt_template) if f not in records[0]})
        if missing:
            raise ConfigError(
                f"{origin}: data.prompt_template uses {missing}, which the rows do not have "
                f"(columns: {sorted(records[0])}); map them with data.fields"
            )
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
