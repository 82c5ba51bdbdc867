"""Evaluation of click / conversion predictions on (possibly aggregated) logs.

A row with n impressions and k positives counts as k positive and n - k negative examples,
so the same numbers come out whether logs are aggregated or not: AUC (impression-weighted),
log loss per impression, and calibration (predicted over observed rate, and the expected
calibration error over quantile bins of the prediction). ``group_pairwise_accuracy`` is the
within-group ranking measure (e.g. headlines of one A/B test), with a bootstrap over groups.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def binary_metrics(pred: np.ndarray, impressions: np.ndarray, positives: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """AUC, log loss and calibration of probabilities ``pred`` [N] for ``positives`` out of ``impressions``."""
    from sklearn.metrics import roc_auc_score

    p = np.clip(np.asarray(pred, dtype=np.float64), 1e-12, 1 - 1e-12)
    n = np.asarray(impressions, dtype=np.float64)
    k = np.asarray(positives, dtype=np.float64)
    total, pos = n.sum(), k.sum()
    out: dict[str, Any] = {"impressions": float(total), "positives": float(pos)}
    out["log_loss"] = float(-(k * np.log(p) + (n - k) * np.log1p(-p)).sum() / max(total, 1.0))
    if 0 < pos < total:
        y = np.concatenate([np.ones_like(p), np.zeros_like(p)])
        w = np.concatenate([k, n - k])
        keep = w > 0
        out["auc"] = float(roc_auc_score(y[keep], np.concatenate([p, p])[keep], sample_weight=w[keep]))
    else:
        out["auc"] = float("nan")  # undefined with one class only
    observed = pos / max(total, 1.0)
    predicted = float((p * n).sum() / max(total, 1.0))
    out["observed_rate"] = float(observed)
    out["predicted_rate"] = predicted
    out["calibration_ratio"] = float(predicted / observed) if observed > 0 else float("nan")
    # reliability over impression-weighted quantile bins of the prediction
    order = np.argsort(p, kind="stable")
    cum = np.cumsum(n[order])
    edges = np.searchsorted(cum, np.linspace(0, cum[-1], bins + 1)[1:-1], side="left") if len(p) else []
    table = []
    ece = 0.0
    for chunk in np.split(order, edges):
        if len(chunk) == 0:
            continue
        nb = n[chunk].sum()
        if nb <= 0:
            continue
        mp, mo = float((p[chunk] * n[chunk]).sum() / nb), float(k[chunk].sum() / nb)
        table.append({"impressions": float(nb), "predicted": mp, "observed": mo})
        ece += nb / total * abs(mp - mo)
    out["ece"] = float(ece)
    out["reliability"] = table
    return out


def group_pairwise_accuracy(
    scores: np.ndarray,
    impressions: np.ndarray,
    clicks: np.ndarray,
    groups: Sequence[str],
    *,
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Share of within-group pairs with different observed CTR where the higher score has the higher CTR.

    Ties in the score count one half. With ``bootstrap`` > 0 the confidence interval resamples
    groups with replacement (pairs of one group are not independent; groups are).
    """
    s = np.asarray(scores, dtype=np.float64)
    rate = np.asarray(clicks, dtype=np.float64) / np.asarray(impressions, dtype=np.float64)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    names = sorted(by_group)
    correct = np.zeros(len(names))
    count = np.zeros(len(names))
    for gi, g in enumerate(names):
        idx = np.asarray(by_group[g])
        if len(idx) < 2:
            continue
        dr = rate[idx][:, None] - rate[idx][None, :]
        ds = s[idx][:, None] - s[idx][None, :]
        upper = np.triu(np.ones_like(dr, dtype=bool), k=1) & (dr != 0)
        agree = np.sign(dr[upper]) * np.sign(ds[upper])
        correct[gi] = float(((agree > 0) + 0.5 * (agree == 0)).sum())
        count[gi] = float(upper.sum())
    n_pairs = count.sum()
    out: dict[str, Any] = {
        "accuracy": float(correct.sum() / n_pairs) if n_pairs else float("nan"),
        "pairs": int(n_pairs),
        "groups": int((count > 0).sum()),
    }
    if bootstrap and n_pairs:
        rng = np.random.default_rng(seed)
        has = np.nonzero(count > 0)[0]
        draws = rng.choice(has, size=(bootstrap, len(has)), replace=True)
        accs = correct[draws].sum(1) / count[draws].sum(1)
        a = (1 - level) / 2
        out["ci"] = [float(np.quantile(accs, a)), float(np.quantile(accs, 1 - a))]
        out["ci_level"] = level
    return out
