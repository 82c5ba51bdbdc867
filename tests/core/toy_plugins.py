"""A real, tiny text policy for testing the core loop without a model library.

The policy is a table of logits per position over a six-character vocabulary; it samples real
completions, learns by a clipped policy-gradient step, checkpoints with safetensors, and shares
its module with the sampler, exactly like a full-size plugin set does through the contracts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

import rlgen

VOCAB = ["a", "b", "c", "d", " ", "<eos>"]
EOS = len(VOCAB) - 1


class CharTokenizer:
    """One token per character; no offsets mapping, so Rollout.from_texts decodes incrementally."""

    pad_token_id = EOS

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False):
        if return_offsets_mapping:
            raise NotImplementedError("this tokenizer has no offsets mapping")
        return {"input_ids": [VOCAB.index(ch) for ch in text]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(VOCAB[i] for i in ids if not (skip_special_tokens and i == EOS))


class TablePolicy(torch.nn.Module):
    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(max_len, len(VOCAB)))


class ToySampler(rlgen.Sampler):
    name = "toy.sampler"
    description = "samples from the toy table policy"

    class Params(rlgen.Params):
        max_new_tokens: int = Field(8, ge=1, description="completion length cap")

    def setup(self, context: rlgen.RunContext) -> None:
        self.policy: TablePolicy | None = None
        self.tokenizer = CharTokenizer()
        exported = Path(context.resolve_model(context.config.model.path)) / "model.safetensors"
        if exported.exists():  # a policy folder written by ToyTrainer.export_policy
            logits = load_file(str(exported))["logits"]
            self.policy = TablePolicy(logits.shape[0])
            self.policy.logits.data.copy_(logits)

    def sync_weights(self, trainer: rlgen.Trainer) -> dict[str, float]:
        self.policy = trainer.policy_module()
        return {"shared": 1.0}

    def generate(self, prompts: list[rlgen.Prompt], group_size: int, seed: int) -> rlgen.Rollout:
        gen = torch.Generator().manual_seed(seed)
        b, t = len(prompts) * group_size, self.params.max_new_tokens
        with torch.no_grad():
            probs = torch.softmax(self.policy.logits[:t], dim=-1)
            ids = torch.stack([torch.multinomial(probs, 1, generator=gen).squeeze(1) for _ in range(b)])
        mask = torch.ones(b, t, dtype=torch.bool)
        for i in range(b):
            eos = (ids[i] == EOS).nonzero()
            if len(eos):
                first = int(eos[0])
                mask[i, first + 1 :] = False
                ids[i, first + 1 :] = EOS
        texts = [self.tokenizer.decode(ids[i][mask[i]].tolist()) for i in range(b)]
        offsets = torch.zeros(b, t, 2, dtype=torch.long)
        for i in range(b):
            offs = rlgen.token_char_offsets(self.tokenizer, ids[i][mask[i]].tolist())
            offsets[i, : len(offs)] = torch.tensor(offs)
        group = torch.arange(len(prompts)).repeat_interleave(group_size)
        meta = [dict(p.meta) for p in prompts for _ in range(group_size)]
        return rlgen.Rollout(texts=texts, completion_ids=ids, completion_mask=mask, group=group, meta=meta,
                             token_offsets=offsets)


class ToyTrainer(rlgen.Trainer):
    name = "toy.trainer"
    description = "policy gradient on the toy table policy"

    class Params(rlgen.Params):
        lr: float = Field(0.5, gt=0, description="Adam learning rate")
        max_len: int = Field(8, ge=1, description="positions in the table")

    def setup(self, context: rlgen.RunContext) -> None:
        self.policy = TablePolicy(self.params.max_len)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.params.lr)
        self.steps = 0

    def policy_module(self) -> torch.nn.Module:
        return self.policy

    def step(self, rollout: rlgen.Rollout, advantages: torch.Tensor) -> dict[str, float]:
        t = rollout.num_tokens
        logp = torch.log_softmax(self.policy.logits[:t], dim=-1)
        token_logp = logp.gather(1, rollout.completion_ids.T).T  # [B, T]
        mask = rollout.completion_mask.float()
        loss = -(advantages * token_logp * mask).sum() / mask.sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.steps += 1
        return {"loss": loss.item(), "optimizer_steps": float(self.steps), "rows": float(rollout.batch_size)}

    def save_checkpoint(self, directory: Path) -> None:
        save_file({"logits": self.policy.logits.detach().clone()}, str(directory / "policy.safetensors"))
        torch.save({"opt": self.opt.state_dict(), "steps": self.steps}, directory / "optim.pt")

    def load_checkpoint(self, directory: Path) -> None:
        self.policy.logits.data.copy_(load_file(str(directory / "policy.safetensors"))["logits"])
        state = torch.load(directory / "optim.pt", weights_only=True)
        self.opt.load_state_dict(state["opt"])
        self.steps = state["steps"]

    def export_policy(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"logits": self.policy.logits.detach().clone()}, str(directory / "model.safetensors"))


class CountLetter(rlgen.RewardProvider):
    name = "toy.count"
    granularity = "sentence"
    description = "how many times a letter appears"

    class Params(rlgen.Params):
        letter: str = Field("a", min_length=1, max_length=1, description="the letter to count")

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        return rlgen.RewardResult(torch.tensor([float(t.count(self.params.letter)) for t in rollout.texts]))


class PenaliseLetter(rlgen.RewardProvider):
    """Token-level: -1 on each token of a letter, with a rolling count kept for resume tests."""

    name = "toy.penalty"
    granularity = "token"
    description = "penalises every token of a letter"

    class Params(rlgen.Params):
        letter: str = Field("d", description="the letter to penalise")

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.seen = 0

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        spans = [[(i, i + 1) for i, ch in enumerate(t) if ch == self.params.letter] for t in rollout.texts]
        self.seen += sum(len(s) for s in spans)
        return rlgen.RewardResult(-rollout.spans_to_tokens(spans).float(), metrics={"seen": float(self.seen)})

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = int(state["seen"])


class MeanCentred(rlgen.AdvantageCombiner):
    name = "toy.centred"
    description = "weighted sentence rewards, group-normalised (Eq. 8), plus token rewards"

    def combine(self, rollout, rewards, weights):
        mask = rollout.completion_mask
        total = sum(weights[k] * r.to_sentence(mask) for k, r in rewards.items() if r.granularity == "sentence")
        adv, self.zero = rlgen.group_normalize(torch.as_tensor(total, dtype=torch.float32), rollout.group)
        out = rlgen.broadcast_to_tokens(adv, mask)
        for k, r in rewards.items():
            if r.granularity == "token":
                out = out + weights[k] * r.values
        return out

    def metrics(self):
        return {"zero_var_groups": self.zero}


class Recorder(rlgen.Callback):
    name = "toy.recorder"
    description = "records lifecycle calls into a file"

    class Params(rlgen.Params):
        path: str = Field(..., description="file to append event names to")

    def _write(self, line: str) -> None:
        with open(self.params.path, "a") as fh:
            fh.write(line + "\n")

    @rlgen.hookimpl
    def rlgen_on_run_start(self, config, context):
        self._write(f"start rank={context.rank}")

    @rlgen.hookimpl
    def rlgen_on_step_end(self, step, metrics, rewards):
        self._write(f"step {step} {sorted(rewards)}")

    @rlgen.hookimpl
    def rlgen_on_checkpoint(self, step, path):
        self._write(f"checkpoint {step} {Path(path).name}")

    @rlgen.hookimpl
    def rlgen_on_run_end(self, step):
        self._write(f"end {step}")


@rlgen.hookimpl
def rlgen_samplers():
    return [ToySampler]


@rlgen.hookimpl
def rlgen_trainers():
    return [ToyTrainer]


@rlgen.hookimpl
def rlgen_reward_providers():
    return [CountLetter, PenaliseLetter]


@rlgen.hookimpl
def rlgen_advantage_combiners():
    return [MeanCentred]


@rlgen.hookimpl
def rlgen_callbacks():
    return [Recorder]


@rlgen.hookimpl
def rlgen_eval_metrics(texts, group):
    return {"toy/length": [float(len(t)) for t in texts], "toy/distinct_texts": len(set(texts)) / len(texts)}
