"""The hf sampler's per-row seeded draw: tokens follow softmax(logits / T) after the warpers, per-row
streams do not depend on the other rows, and the recorded log-prob is that of the temperature-scaled model."""

from __future__ import annotations

import pytest
import torch

from rlgen_plugins.samplers.seeded import SeededSampler

LOGITS = torch.tensor([[0.0, 1.0, 2.0, 3.0, -30.0]])


def draw(sampler: SeededSampler, logits: torch.Tensor, n: int) -> torch.Tensor:
    ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    for _ in range(n):
        sampler(ids, logits)
    return sampler.sampled()[0]


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.5, 0), (1.0, 2)])
def test_draws_follow_the_warped_distribution(temperature: float, top_k: int) -> None:
    n = 20_000
    tokens = draw(SeededSampler([11], temperature, top_k=top_k), LOGITS, n)[0]
    expected = torch.softmax(LOGITS[0] / temperature, -1)
    if top_k:
        kept = expected.topk(top_k).indices
        expected = torch.zeros_like(expected).index_fill(0, kept, 1.0) * expected
        expected = expected / expected.sum()
    freq = torch.bincount(tokens, minlength=LOGITS.shape[1]).float() / n
    # a binomial proportion over 20k draws has a standard deviation under 0.0036
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    assert freq[-1] == 0  # a token of probability ~1e-15 is never drawn


def test_each_row_draws_from_its_own_seed_whatever_the_batch() -> None:
    alone = draw(SeededSampler([5], 1.0), LOGITS, 50)
    batch = draw(SeededSampler([9, 5, 7], 1.0), LOGITS.expand(3, -1), 50)
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch[0], batch[1])


def test_recorded_logprobs_are_the_temperature_scaled_model_log_probs() -> None:
    sampler = SeededSampler([3, 4], 0.7, top_p=0.9)
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0)) * 3
    allowed = sampler(torch.zeros(2, 1, dtype=torch.long), logits)
    tokens, logprobs = sampler.sampled()
    assert torch.equal(allowed.argmax(-1), tokens[:, 0])
    torch.testing.assert_close(logprobs[:, 0], torch.log_softmax(logits / 0.7, -1).gather(1, tokens)[:, 0])
