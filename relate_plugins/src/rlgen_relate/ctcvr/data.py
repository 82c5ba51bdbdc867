"""Reading CTCVR training logs (JSONL or Parquet) into one validated table.

Two row shapes are accepted, with configurable field names:

- per impression: ``click`` (0/1) and optionally ``conversion`` (0/1, only after a click);
- aggregated: ``impressions``, ``clicks`` and optionally ``conversions`` counts
  (0 <= conversions <= clicks <= impressions, impressions > 0).

Both become the same columns (impressions, clicks, conversions), a per-impression row being
one impression; the loss treats counts with the binomial likelihood. A file without any
conversion field trains the CTR path only. Every malformed row is reported with its file and
line (Parquet: row number) and counted; when more than ``max_bad_fraction`` of a file's rows
are bad, loading fails, because then the field names or the format are wrong rather than a
few rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pydantic
from pydantic import Field

from rlgen import field_text
from rlgen import RlgenError
from rlgen import get_logger

log = get_logger("rlgen_relate.ctcvr")


class DataError(RlgenError):
    """A log file cannot be used (unreadable, or mostly malformed rows)."""


class LogFields(pydantic.BaseModel):
    """Which column holds what; every name is configurable."""

    model_config = pydantic.ConfigDict(extra="forbid")

    text: str = Field("text", description="the ad text (what the policy generates)")
    context: list[str] = Field(default_factory=list, description="context fields: query, ad metadata, ...")
    group: str | None = Field(None, description="optional group id (A/B test, query) for group objectives and metrics")
    format: Literal["auto", "impression", "aggregated"] = Field(
        "auto", description="row shape; auto: aggregated when the impressions field is present"
    )
    click: str = Field("click", description="per-impression click label (0/1)")
    conversion: str = Field("conversion", description="per-impression conversion label (0/1)")
    impressions: str = Field("impressions", description="aggregated impression count")
    clicks: str = Field("clicks", description="aggregated click count")
    conversions: str = Field("conversions", description="aggregated conversion count")


@dataclass
class BadRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class LogTable:
    """Validated rows of one or more log files, as columns."""

    texts: list[str]
    contexts: dict[str, list[str]]
    impressions: np.ndarray  # float64 [N]
    clicks: np.ndarray  # float64 [N]
    conversions: np.ndarray | None  # float64 [N], None when the logs have no conversion labels
    groups: list[str] | None
    sources: list[tuple[str, int]]  # (file, line) of each row, for reports and score output
    raw: list[dict[str, Any]] = field(default_factory=list, repr=False)
    bad_rows: list[BadRow] = field(default_factory=list)
    total_rows: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def has_labels(self) -> bool:
        return self.impressions.size == len(self.texts)

    @property
    def has_conversions(self) -> bool:
        return self.conversions is not None

    def subset(self, index: Sequence[int] | np.ndarray) -> "LogTable":
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return LogTable(
            texts=pick(self.texts),
            contexts={k: pick(v) for k, v in self.contexts.items()},
            impressions=self.impressions[idx] if self.has_labels else self.impressions,
            clicks=self.clicks[idx] if self.has_labels else self.clicks,
            conversions=self.conversions[idx] if self.conversions is not None else None,
            groups=pick(self.groups) if self.groups is not None else None,
            sources=pick(self.sources),
            raw=pick(self.raw) if self.raw else [],
            total_rows=len(idx),
        )


def _iter_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line or row number, record or None, parse error) for every row of a JSONL/Parquet file."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
        for i, rec in enumerate(table.to_pylist(), start=1):
            yield i, rec, None
        return
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield i, None, f"not valid JSON ({exc.msg} at column {exc.colno})"


def _count(value: Any, name: str) -> float:
    """A non-negative integer count from an int, an integral float, or a bool (0/1 labels)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int):
        v = float(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        v = value
    elif isinstance(value, str) and value.strip().isdigit():
        v = float(int(value.strip()))
    else:
        raise ValueError(f"field {name!r} must be a non-negative integer, got {value!r}")
    if v < 0:
        raise ValueError(f"field {name!r} must be >= 0, got {value!r}")
    return v


def _text(rec: dict[str, Any], name: str, allow_empty: bool = False) -> str:
    v = rec.get(name)
    # pandas-written JSON spells a missing value NaN: it is missing, not the text "nan"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise ValueError(f"missing field {name!r}")
    if not isinstance(v, str):
        # numbers and lists (e.g. selling points) read as the prompts show them
        if isinstance(v, (int, float, list, tuple)) and not isinstance(v, bool):
            v = field_text(v)
        else:
            raise ValueError(f"field {name!r} must be text, a number or a list, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise ValueError(f"field {name!r} is empty")
    return v


def read_logs(
    paths: str | Path | Sequence[str | Path],
    fields: LogFields | None = None,
    *,
    labels: bool = True,
    max_bad_fraction: float = 0.5,
    keep_raw: bool = False,
    max_reported: int = 20,
) -> LogTable:
    """Read and validate log files.

    Args:
        paths: one or more ``.jsonl`` / ``.parquet`` files.
        fields: field names and row shape.
        labels: False for files that only need scoring (text and context fields).
        max_bad_fraction: fail when a file has more bad rows than this share.
        keep_raw: keep each valid row's record (for writing scores next to the input).
        max_reported: how many bad rows to log one by one (all are counted and returned).

    Raises:
        DataError: a file is missing, unreadable, empty, or mostly malformed.
    """
    fields = fields or LogFields()
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    texts: list[str] = []
    contexts: dict[str, list[str]] = {c: [] for c in fields.context}
    imps: list[float] = []
    clks: list[float] = []
    convs: list[float | None] = []
    groups: list[str] = []
    sources: list[tuple[str, int]] = []
    raws: list[dict[str, Any]] = []
    bad: list[BadRow] = []
    total = 0
    fmt = fields.format
    conv_field_seen = False

    for path in files:
        if not path.is_file():
            raise DataError(f"log file {path} does not exist")
        file_rows = file_bad = 0
        for line, rec, err in _iter_records(path):
            file_rows += 1
            try:
                if err is not None:
                    raise ValueError(err)
                if not isinstance(rec, dict):
                    raise ValueError(f"row is a {type(rec).__name__}, expected an object")
                text = _text(rec, fields.text)
                ctx = {c: _text(rec, c, allow_empty=True) for c in fields.context}
                grp = None
                if fields.group is not None:
                    grp = _text(rec, fields.group)
                n = c = v = 0.0
                v_opt: float | None = None
                if labels:
                    if fmt == "auto":  # decided by the first row that has either label field
                        if fields.impressions in rec:
                            fmt = "aggregated"
                        elif fields.click in rec:
                            fmt = "impression"
                        else:
                            raise ValueError(f"neither {fields.impressions!r} nor {fields.click!r} present")
                    if fmt == "aggregated":
                        if fields.impressions not in rec:
                            raise ValueError(f"missing field {fields.impressions!r}")
                        n = _count(rec[fields.impressions], fields.impressions)
                        if n <= 0:
                            raise ValueError(f"field {fields.impressions!r} must be > 0, got {rec[fields.impressions]!r}")
                        if fields.clicks not in rec:
                            raise ValueError(f"missing field {fields.clicks!r}")
                        c = _count(rec[fields.clicks], fields.clicks)
                        if c > n:
                            raise ValueError(f"{fields.clicks}={c:g} exceeds {fields.impressions}={n:g}")
                        if rec.get(fields.conversions) is not None:
                            v = _count(rec[fields.conversions], fields.conversions)
                            if v > c:
                                raise ValueError(f"{fields.conversions}={v:g} exceeds {fields.clicks}={c:g}")
                            v_opt = v
                    else:
                        if fields.click not in rec:
                            raise ValueError(f"missing field {fields.click!r}")
                        n, c = 1.0, _count(rec[fields.click], fields.click)
                        if c > 1:
                            raise ValueError(f"field {fields.click!r} must be 0 or 1, got {rec[fields.click]!r}")
                        if rec.get(fields.conversion) is not None:
                            v = _count(rec[fields.conversion], fields.conversion)
                            if v > 1:
                                raise ValueError(f"field {fields.conversion!r} must be 0 or 1, got {rec[fields.conversion]!r}")
                            if v > c:
                                raise ValueError("a conversion without a click (ESMM needs click -> conversion)")
                            v_opt = v
            except ValueError as exc:
                file_bad += 1
                bad.append(BadRow(str(path), line, str(exc)))
                if len(bad) <= max_reported:
                    log.warning("bad row skipped", row=str(bad[-1]))
                continue
            texts.append(text)
            for k in contexts:
                contexts[k].append(ctx[k])
            if grp is not None:
                groups.append(grp)
            if labels:
                imps.append(n)
                clks.append(c)
                convs.append(v_opt)
                conv_field_seen = conv_field_seen or v_opt is not None
            sources.append((str(path), line))
            if keep_raw:
                raws.append(rec)
        total += file_rows
        if file_rows == 0:
            raise DataError(f"log file {path} has no rows")
        if file_bad:
            log.warning("bad rows in log file", file=str(path), bad=file_bad, rows=file_rows)
        if file_bad / file_rows > max_bad_fraction:
            examples = "; ".join(str(b) for b in bad if b.file == str(path))[:600]
            raise DataError(
                f"{path}: {file_bad} of {file_rows} rows are malformed (more than {max_bad_fraction:.0%}); "
                f"check the field names and the row format. First problems: {examples}"
            )

    conversions: np.ndarray | None = None
    if labels and conv_field_seen:
        missing = [i for i, v in enumerate(convs) if v is None]
        if missing:
            # conversion labels on some rows only: the rest would silently count as "no conversion"
            first = ", ".join(f"{sources[i][0]}:{sources[i][1]}" for i in missing[:5])
            raise DataError(
                f"{len(missing)} rows lack a conversion label while others have one (e.g. {first}); "
                "label every row or none (none trains CTR only)"
            )
        conversions = np.asarray(convs, dtype=np.float64)
    if len(bad) > max_reported:
        log.warning("more bad rows not shown", count=len(bad) - max_reported)
    return LogTable(
        texts=texts,
        contexts=contexts,
        impressions=np.asarray(imps, dtype=np.float64),
        clicks=np.asarray(clks, dtype=np.float64),
        conversions=conversions,
        groups=groups if fields.group is not None else None,
        sources=sources,
        raw=raws,
        bad_rows=bad,
        total_rows=total,
    )
