"""Scoring a file of ads with a trained CTCVR model (``rlgen-relate ctcvr score``).

Each valid input row is written back with ``pctr``, ``pcvr`` and ``pctcvr`` added (and
``source_line``, since malformed rows are skipped and reported). The output format follows
the output file's suffix: ``.jsonl`` or ``.parquet``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlgen import ConfigError

from .data import LogFields, LogTable, read_logs
from .model import CtcvrModel


def score_table(model: CtcvrModel, table: LogTable) -> list[dict[str, Any]]:
    """Per-row predictions for ``table`` (read with ``keep_raw=True``), input fields kept."""
    contexts = [{k: table.contexts[k][i] for k in model.config.context_fields} for i in range(len(table))]
    pred = model.predict(table.texts, contexts)
    rows = []
    for i in range(len(table)):
        rec = dict(table.raw[i]) if table.raw else {model.config.text_field: table.texts[i]}
        rec["source_line"] = table.sources[i][1]
        rec["pctr"] = float(pred.pctr[i])
        rec["pcvr"] = float(pred.pcvr[i])
        rec["pctcvr"] = float(pred.pctcvr[i])
        rows.append(rec)
    return rows


def score_file(
    model: CtcvrModel,
    data: str | Path,
    out: str | Path,
    *,
    text_field: str | None = None,
    context_fields: dict[str, str] | None = None,
    max_bad_fraction: float = 0.5,
) -> dict[str, Any]:
    """Score ``data`` and write ``out``; returns a summary (rows written, bad rows).

    Args:
        text_field: column of the ad text (default: the model's text field name).
        context_fields: model context field -> column in ``data`` (default: same names).
    """
    mapping = dict(context_fields or {})
    unknown = sorted(set(mapping) - set(model.config.context_fields))
    if unknown:
        raise ConfigError(f"ctcvr score: the model has no context fields {unknown}; it has {model.config.context_fields}")
    cols = [mapping.get(k, k) for k in model.config.context_fields]
    fields = LogFields(text=text_field or model.config.text_field, context=cols)
    table = read_logs(data, fields, labels=False, keep_raw=True, max_bad_fraction=max_bad_fraction)
    # rename the file's context columns to the model's field names
    table.contexts = {k: table.contexts[c] for k, c in zip(model.config.context_fields, cols)}
    rows = score_table(model, table)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
    else:
        with out.open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"rows": len(rows), "bad_rows": len(table.bad_rows), "out": str(out)}
