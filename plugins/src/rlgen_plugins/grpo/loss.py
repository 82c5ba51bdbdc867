"""The GRPO objective of paper Eq. 6, token by token, as pure torch functions.

Eq. 6 (written as an objective to maximise; the trainer minimises its negative):

    L(theta) = 1/G sum_i sum_t [ min(rho_it A_it, clip(rho_it, 1 - eps_low, 1 + eps_high) A_it)
                                 - beta D_KL(pi_theta || pi_ref) ]

with rho_it = pi_theta(o_it | x, o_i<t) / pi_old(o_it | x, o_i<t) and A_it the token-level
advantage of Eq. 9 (so token-determined credit reaches exactly the tokens it is about).
The KL term is the k3 estimator (Schulman, "Approximating KL divergence"), per token.

Nothing here knows about models, DeepSpeed or ranks: every function takes tensors and returns
tensors, so the trainer and an independent reference computation in the tests can be compared.
Each aggregation takes optional global denominators so that a batch split over micro-batches
and ranks sums to exactly the loss of the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(o_t | context) of the sampled tokens.

    Args:
        logits: [B, T, V], position t predicting ``targets[:, t]``.
        targets: [B, T] token ids.
        temperature: the sampler's temperature; logits are divided by it so that the ratio
            rho of Eq. 6 compares the same distribution the tokens were drawn from.

    Returns:
        [B, T] float32 log-probabilities (``gather - logsumexp`` avoids a second [B, T, V] tensor).
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    picked = torch.gather(z, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def token_logprobs_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` and :func:`token_entropy` (no gradient) sharing one logsumexp over the vocabulary.

    Bitwise what the two functions give separately; the logsumexp over [B, T, V] is one of the few
    passes over the logits a training step makes, so the trainer's entropy metric reuses it.
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = torch.gather(z, -1, targets.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():
        z = z.detach()
        entropy = lse.detach() - (torch.softmax(z, dim=-1) * z).sum(-1)
    return logp, entropy


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H(pi(. | context)) = logsumexp(z) - sum_v p_v z_v per position, [B, T] (a metric; no gradient)."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimate of D_KL(pi_theta || pi_ref) per token (the KL term of Eq. 6).

    With r = pi_ref / pi_theta evaluated at the sampled token, k3 = r - log r - 1: unbiased
    for KL under samples from pi_theta, never negative, and with gradient (1 - r) d log pi_theta.
    """
    log_r = ref_logp - logp
    return torch.exp(log_r) - log_r - 1.0


def clipped_surrogate(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first term of Eq. 6: min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), per token.

    Returns:
        (surrogate [B, T], clipped [B, T] bool): ``clipped`` is True where the clipped term is
        the smaller one, i.e. where this token contributes no gradient through rho.
    """
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * advantages
    clipped_term = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    surrogate = torch.minimum(unclipped, clipped_term)
    return surrogate, clipped_term < unclipped


def per_token_objective(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The bracket of Eq. 6 for every token: surrogate - beta * KL.

    Returns:
        (objective [B, T], clipped [B, T] bool, kl [B, T] or None when beta == 0).
    """
    surrogate, clipped = clipped_surrogate(logp, logp_old, advantages, eps_low, eps_high)
    if beta == 0.0:
        return surrogate, clipped, None
    if ref_logp is None:
        raise ValueError("beta > 0 needs the reference log-probabilities ref_logp")
    kl = k3_kl(logp, ref_logp)
    return surrogate - beta * kl, clipped, kl


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation,
    *,
    num_sequences: float | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, T] to one number over the real tokens (``mask``).

    Modes:
        ``seq-mean-token-mean`` (GRPO, DeepSeekMath): average each sequence over its own tokens,
            then average the sequences: 1/B sum_i 1/|o_i| sum_t x_it. Every completion weighs
            the same whatever its length.
        ``token-mean`` (DAPO): one average over every token of the batch:
            sum_it x_it / sum_i |o_i|. Long completions weigh more, and no length is favoured
            by the normalisation itself.
        ``seq-mean-token-sum`` (Eq. 6 as written): 1/G sum_i sum_t x_it, i.e. sum each sequence
            over its tokens and average the sequences (the mean over groups of Eq. 6's 1/G sum).
            The scale grows with completion length.

    Args:
        num_sequences: denominator of the sequence means; defaults to B. Pass the count over
            the whole batch (all micro-batches and ranks) when ``values`` is a part of it.
        num_tokens: denominator of ``token-mean``; defaults to ``mask.sum()``, likewise global.
    """
    m = mask.to(values.dtype)
    if mode == "token-mean":
        denom = m.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0)
        return (values * m).sum() / denom
    n_seq = values.shape[0] if num_sequences is None else num_sequences
    n_seq = max(float(n_seq), 1.0)
    per_seq = (values * m).sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / m.sum(-1).clamp(min=1.0)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"unknown loss aggregation {mode!r}; use one of {AGGREGATIONS}")
    return per_seq.sum() / n_seq


@dataclass
class GrpoLoss:
    """The loss of one (micro-)batch and the per-token pieces the trainer logs."""

    loss: torch.Tensor  # scalar: -aggregate(objective), the thing to minimise
    clipped: torch.Tensor  # [B, T] bool
    kl: torch.Tensor | None  # [B, T] or None when beta == 0


def grpo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: Aggregation = "seq-mean-token-mean",
    num_sequences: float | None = None,
    num_tokens: float | None = None,
) -> GrpoLoss:
    """Negative Eq. 6 for a batch of completions.

    Args:
        logp: [B, T] log pi_theta of the sampled tokens (with gradient).
        logp_old: [B, T] log pi_theta_old (the policy that sampled; no gradient).
        advantages: [B, T] A_it (Eq. 9), zero on padding.
        mask: [B, T] bool, True on real completion tokens.
        ref_logp: [B, T] log pi_ref, needed when ``beta > 0``.
        beta: weight of the KL term.
        eps_low / eps_high: clip range [1 - eps_low, 1 + eps_high] of rho (equal: PPO/GRPO;
            eps_high > eps_low: DAPO's clip-higher).
        aggregation: see :func:`aggregate`.
        num_sequences / num_tokens: global denominators, see :func:`aggregate`.
    """
    objective, clipped, kl = per_token_objective(
        logp, logp_old.detach(), advantages, ref_logp=None if ref_logp is None else ref_logp.detach(),
        beta=beta, eps_low=eps_low, eps_high=eps_high,
    )
    value = aggregate(objective, mask, aggregation, num_sequences=num_sequences, num_tokens=num_tokens)
    return GrpoLoss(loss=-value, clipped=clipped & mask, kl=kl)
