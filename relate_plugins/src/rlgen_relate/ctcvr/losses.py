"""Training objectives of the CTCVR model.

``esmm_loss`` is the entire-space objective of ESMM (Ma et al. 2018), which the paper adopts
for its CTCVR reward (section 3.3.3): over every impression, a Bernoulli likelihood of the
click under pCTR and of click-and-convert under pCTCVR = pCTR x pCVR; the CVR tower is never
fitted on clicked-only samples. Rows may aggregate impressions, in which case the Bernoulli
likelihood becomes the binomial one (same gradients as the expanded rows).

The group objectives are optional additions for logs whose rows come in comparable groups
(e.g. the headlines of one A/B test, or the ads shown for one query): across groups the click
rate varies for reasons the text does not carry (time, audience, placement), and those
differences dominate a pointwise loss; within a group only the text differs. ``listwise`` is
the conditional likelihood of the group's clicks given their total, which is exactly what a
free per-group offset on the CTR logit leaves once the offsets are profiled out (Poisson
fixed effects = conditional multinomial); ``pairwise`` is a Bradley-Terry loss on the pairs
of a group whose observed rates differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012)."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def esmm_loss(
    ctr_logit: torch.Tensor,
    cvr_logit: torch.Tensor | None,
    impressions: torch.Tensor,
    clicks: torch.Tensor,
    conversions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Entire-space ESMM negative log-likelihood, per impression.

    For row i with n_i impressions, c_i clicks and v_i click-and-conversions:

        L_ctr   = -[c_i log pCTR_i + (n_i - c_i) log(1 - pCTR_i)]
        L_ctcvr = -[v_i log pCTCVR_i + (n_i - v_i) log(1 - pCTCVR_i)],  pCTCVR = pCTR x pCVR

    and the loss is (sum_i L_ctr + L_ctcvr) / sum_i n_i, so that a row of n impressions weighs
    exactly as its n one-impression rows (the binomial coefficient is a constant and omitted).
    Without ``cvr_logit`` only the CTR term is used.

    Returns: ``loss`` (what to minimise), ``ctr`` and ``ctcvr`` (the two terms, per impression).
    """
    n = impressions.to(ctr_logit.dtype)
    c = clicks.to(ctr_logit.dtype)
    total = n.sum().clamp_min(1.0)
    log_p = F.logsigmoid(ctr_logit)
    ctr_nll = -(c * log_p + (n - c) * F.logsigmoid(-ctr_logit)).sum() / total
    out = {"ctr": ctr_nll}
    if cvr_logit is not None:
        if conversions is None:
            raise ValueError("esmm_loss: a CVR tower needs conversion counts")
        v = conversions.to(ctr_logit.dtype)
        log_q = log_p + F.logsigmoid(cvr_logit)  # log pCTCVR = log pCTR + log pCVR
        ctcvr_nll = -(v * log_q + (n - v) * log1mexp(log_q)).sum() / total
        out["ctcvr"] = ctcvr_nll
        out["loss"] = ctr_nll + ctcvr_nll
    else:
        out["loss"] = ctr_nll
    return out


def _segment_logsumexp(x: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
    """logsumexp of ``x`` within each segment id of ``seg`` -> [n_seg]."""
    mx = torch.full((n_seg,), -torch.inf, dtype=x.dtype, device=x.device)
    mx = mx.scatter_reduce(0, seg, x.detach(), reduce="amax", include_self=True)
    s = torch.zeros(n_seg, dtype=x.dtype, device=x.device).index_add(0, seg, torch.exp(x - mx[seg]))
    return mx + torch.log(s)


def listwise_group_loss(
    ctr_logit: torch.Tensor, impressions: torch.Tensor, clicks: torch.Tensor, group: torch.Tensor
) -> torch.Tensor:
    """Conditional likelihood of where a group's clicks fell, per click.

    Given the total clicks of group g, click counts are multinomial with probabilities
    proportional to n_i x pCTR_i (the Poisson approximation, sound for small CTRs):

        L = -sum_g sum_{i in g} c_i [log n_i + log pCTR_i - logsumexp_{j in g}(log n_j + log pCTR_j)]

    ``group`` holds contiguous or arbitrary integer ids; groups with one row or no click add 0.
    """
    _, seg = torch.unique(group, return_inverse=True)
    n_seg = int(seg.max().item()) + 1 if seg.numel() else 0
    score = torch.log(impressions.to(ctr_logit.dtype).clamp_min(1.0)) + F.logsigmoid(ctr_logit)
    lse = _segment_logsumexp(score, seg, n_seg)
    c = clicks.to(ctr_logit.dtype)
    return -(c * (score - lse[seg])).sum() / c.sum().clamp_min(1.0)


def pairwise_group_loss(
    ctr_logit: torch.Tensor, impressions: torch.Tensor, clicks: torch.Tensor, group: torch.Tensor
) -> torch.Tensor:
    """Bradley-Terry loss over pairs of one group with different observed CTRs.

    Each pair (i, j) with CTR_i > CTR_j adds -log sigmoid(a_i - a_j), weighted by the pair's
    two-proportion |z| statistic capped at 3, so that pairs the data can tell apart count more
    than coin flips. Normalised by the total weight.
    """
    n = impressions.to(ctr_logit.dtype).clamp_min(1.0)
    rate = clicks.to(ctr_logit.dtype) / n
    same = group[:, None] == group[None, :]
    higher = rate[:, None] > rate[None, :]
    mask = same & higher
    if not bool(mask.any()):
        return ctr_logit.sum() * 0.0
    pooled = (clicks[:, None] + clicks[None, :]).to(ctr_logit.dtype) / (n[:, None] + n[None, :])
    se = torch.sqrt((pooled * (1 - pooled)).clamp_min(1e-12) * (1 / n[:, None] + 1 / n[None, :]))
    w = ((rate[:, None] - rate[None, :]).abs() / se).clamp(max=3.0) * mask
    diff = ctr_logit[:, None] - ctr_logit[None, :]
    return -(w * F.logsigmoid(diff)).sum() / w.sum().clamp_min(1e-12)
