"""A plain-torch policy-gradient trainer: the trainer side of the weight-sync contract at test scale.

``relate.grpo`` needs DeepSpeed, which the vLLM test environment leaves out; this trainer does
one AdamW step on ``-(advantage * log pi(token))`` over the completion tokens and exports its
full weights, which is all the ``vllm`` sampler needs to see. Registered as ``test.torch_pg``
for loop runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pydantic
import torch

import rlgen
from rlgen_plugins.models import load_causal_lm


def completion_logprobs(model: torch.nn.Module, rollout: rlgen.Rollout, temperature: float = 1.0) -> torch.Tensor:
    """[B, T] log-probs of the rollout's completion tokens under ``model`` (left-padded prompts)."""
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
    attn = torch.cat([rollout.prompt_mask, torch.ones_like(rollout.completion_mask)], dim=1).long()
    pos = (attn.cumsum(1) - 1).clamp(min=0)  # positions count real tokens only
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()
    p = rollout.prompt_ids.shape[1]
    return torch.log_softmax(logits[:, p - 1 : -1] / temperature, dim=-1).gather(2, rollout.completion_ids[..., None])[..., 0]


class TorchPG(rlgen.Trainer):
    """One AdamW step of REINFORCE with the given advantages; exports ``state_dict``."""

    name = "test.torch_pg"
    description = "plain-torch policy gradient step (tests)"

    class Params(rlgen.Params):
        learning_rate: float = pydantic.Field(1e-3, gt=0, description="AdamW learning rate")

    def __init__(self, params: pydantic.BaseModel | None = None, model: torch.nn.Module | None = None) -> None:
        super().__init__(params)
        self.model = model
        self.opt: torch.optim.Optimizer | None = None
        self.exports = 0

    def setup(self, context: rlgen.RunContext) -> None:
        if self.model is None:
            self.model = load_causal_lm(context.resolve_model(context.config.model.path))

    def step(self, rollout: rlgen.Rollout, advantages: torch.Tensor) -> dict[str, float]:
        assert self.model is not None
        if self.opt is None:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.params.learning_rate, weight_decay=0.0)
        self.model.train()
        mask = rollout.completion_mask.float()
        lp = completion_logprobs(self.model, rollout)
        loss = -(advantages * lp * mask).sum() / mask.sum().clamp(min=1)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.model.eval()
        return {"loss": float(loss.detach())}

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        assert self.model is not None
        self.exports += 1
        for name, tensor in self.model.state_dict().items():
            yield name, tensor.detach()

    def save_checkpoint(self, directory: Path) -> None:
        torch.save(self.model.state_dict(), directory / "model.pt")


@rlgen.hookimpl
def rlgen_trainers():
    return [TorchPG]
