"""Impression logs from the simulator: what a platform would have recorded serving a pool of candidate ads.

For every context, a pool of candidates (:mod:`.candidates`) goes through review; the shown ones split the
context's traffic (a seeded log-normal volume, shared out by Dirichlet weights as an exploring ad server would),
and every impression draws a click from ``p_click`` and, after a click, a conversion from ``p_conv``. Rejected
candidates never get impressions, so they are absent from the logs, as on a real platform.

Rows carry only what a platform logs: the context fields, the ad text, an ad id (a hash of the text) and the
outcomes; never a candidate's kind or any probability. Both layouts come from the same draws, so with the same
seed the aggregated rows are exactly the per-impression rows summed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .candidates import KINDS, candidate_ads
from .features import context_key
from .model import Simulator, SimulatorConfig

CONTEXT_FIELDS = ("query", "bid_word", "selling_points", "landing_page")


@dataclass
class LogSummary:
    path: Path | None
    rows: int
    contexts: int
    ads_shown: int
    ads_rejected: int
    impressions: int
    clicks: int
    conversions: int

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "path"}
        d["path"] = str(self.path) if self.path else None
        d["ctr"] = self.clicks / self.impressions if self.impressions else 0.0
        d["cvr"] = self.conversions / self.clicks if self.clicks else 0.0
        return d


@dataclass
class _Served:
    base: dict[str, Any]  # the row's context fields, ad id and text
    clicks: np.ndarray  # bool [n impressions]
    conversions: np.ndarray  # bool [n impressions]


def _other_context(contexts: Sequence[dict[str, Any]], i: int, rng: np.random.Generator) -> dict[str, Any] | None:
    """A context of another vertical (or at least another query), for the off-topic candidate."""
    n = len(contexts)
    if n < 2:
        return None
    mine = contexts[i]
    for _ in range(20):
        j = int(rng.integers(n))
        if j != i and contexts[j].get("vertical") != mine.get("vertical") and contexts[j].get("query") != mine.get("query"):
            return contexts[j]
    j = (i + 1) % n
    return contexts[j]


def simulate_impressions(
    contexts: Sequence[dict[str, Any]],
    seed: int = 0,
    impressions_per_context: int = 2000,
    kinds: Sequence[str] = KINDS,
    config: SimulatorConfig | None = None,
) -> tuple[list[_Served], int]:
    """Every shown candidate with its per-impression outcomes; also the number of rejected candidates."""
    if impressions_per_context < 1:
        raise ValueError(f"impressions_per_context must be >= 1, got {impressions_per_context}")
    cfg = config or SimulatorConfig()
    rng = np.random.default_rng([seed, 0x10C5])
    pool_ctx: list[dict[str, Any]] = []
    pool_ads: list[str] = []
    owner: list[int] = []
    for i, ctx in enumerate(contexts):
        other = _other_context(contexts, i, rng)
        for _, text in candidate_ads(ctx, seed, other, kinds, cfg.title_max, cfg.description_max):
            pool_ctx.append(ctx)
            pool_ads.append(text)
            owner.append(i)
    # fatigue over the whole pool: a stock text served across many contexts wears out
    assessment = Simulator(cfg, seed).assess(pool_ctx, pool_ads)
    shown = assessment.shown
    owner_arr = np.array(owner, dtype=np.int64)
    served: list[_Served] = []
    for i, ctx in enumerate(contexts):
        idx = np.flatnonzero((owner_arr == i) & shown)
        if len(idx) == 0:
            continue
        idx = idx[rng.permutation(len(idx))]  # row order within a context says nothing about the candidate
        traffic = max(len(idx), int(round(impressions_per_context * rng.lognormal(0.0, 0.5))))
        counts = rng.multinomial(traffic, rng.dirichlet(np.full(len(idx), 2.0)))
        cid = str(ctx.get("id") or context_key(ctx))
        for k, n in zip(idx, counts):
            n = int(n)
            click = rng.random(n) < assessment.p_click[k]
            conv = click & (rng.random(n) < assessment.p_conv[k])
            if n == 0:
                continue
            text = pool_ads[k]
            base = {"context_id": cid, "vertical": ctx.get("vertical")}
            base.update({f: ctx.get(f) for f in CONTEXT_FIELDS})
            base["ad_id"] = hashlib.blake2b(f"{cid}\x1f{text}".encode(), digest_size=6).hexdigest()
            base["ad_text"] = text
            served.append(_Served(base, click, conv))
    return served, int((~shown).sum())


def iter_log_rows(served: Sequence[_Served], per_impression: bool) -> Iterator[dict[str, Any]]:
    for s in served:
        if per_impression:
            for c, v in zip(s.clicks.tolist(), s.conversions.tolist()):
                yield {**s.base, "click": int(c), "conversion": int(v)}
        else:
            yield {
                **s.base,
                "impressions": int(len(s.clicks)),
                "clicks": int(s.clicks.sum()),
                "conversions": int(s.conversions.sum()),
            }


def write_logs(
    path: str | Path,
    contexts: Sequence[dict[str, Any]],
    per_impression: bool = False,
    seed: int = 0,
    impressions_per_context: int = 2000,
    kinds: Sequence[str] = KINDS,
    config: SimulatorConfig | None = None,
) -> LogSummary:
    """Simulate and write impression logs (JSONL, or Parquet when ``path`` ends in .parquet), atomically.

    Aggregated rows (the default) hold ``impressions, clicks, conversions``; per-impression rows hold
    ``click, conversion`` (0/1) and are ``impressions_per_context`` times more numerous: keep the traffic small.
    """
    served, rejected = simulate_impressions(contexts, seed, impressions_per_context, kinds, config)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    rows = 0
    try:
        if out.suffix == ".parquet":
            os.close(fd)
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(list(iter_log_rows(served, per_impression)))
            rows = table.num_rows
            pq.write_table(table, tmp)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for row in iter_log_rows(served, per_impression):
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    rows += 1
        _make_readable(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return LogSummary(
        path=out,
        rows=rows,
        contexts=len(contexts),
        ads_shown=len(served),
        ads_rejected=rejected,
        impressions=int(sum(len(s.clicks) for s in served)),
        clicks=int(sum(int(s.clicks.sum()) for s in served)),
        conversions=int(sum(int(s.conversions.sum()) for s in served)),
    )


def _make_readable(path: str | Path) -> None:
    """mkstemp creates files private to the owner; give the result the permissions of an ordinary new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
