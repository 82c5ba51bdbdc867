"""Loggers as callback plugins: ``tensorboard`` scalars and readable ``samples``.

The core loop already writes every step's metrics to ``metrics.jsonl`` in the run folder (the
default logger), so these add what a person wants on top: curves in TensorBoard, and now and
then the completions themselves with every reward's score, to read what the policy writes.
Both log on the main rank only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pydantic
import torch

import rlgen
from rlgen import get_logger

log = get_logger("rlgen.samples")


class TensorBoardLogger(rlgen.Callback):
    """Every numeric metric of every step as a TensorBoard scalar (tag = metric name)."""

    name = "tensorboard"
    description = "write every step metric as a TensorBoard scalar (optionally reward/advantage histograms)"

    class Params(rlgen.Params):
        log_dir: str | None = pydantic.Field(None, description="event file folder (default: <run folder>/tensorboard)")
        histograms: bool = pydantic.Field(
            False, description="also write histograms of per-sample rewards and per-token advantages"
        )

    def __init__(self, params: pydantic.BaseModel | None = None) -> None:
        super().__init__(params)
        self._writer: Any = None
        self.log_dir: Path | None = None

    def setup(self, context: rlgen.RunContext) -> None:
        if not context.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(self.params.log_dir) if self.params.log_dir else Path(context.output_dir) / "tensorboard"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    @rlgen.hookimpl
    def rlgen_on_step_end(
        self,
        step: int,
        metrics: dict[str, float],
        rollout: rlgen.Rollout,
        rewards: dict[str, rlgen.RewardResult],
        advantages: torch.Tensor,
    ) -> None:
        if self._writer is None:
            return
        for key, value in metrics.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(key, value, step)
        if self.params.histograms:
            mask = rollout.completion_mask
            for key, result in rewards.items():
                self._writer.add_histogram(f"reward/{key}", result.to_sentence(mask).float(), step)
            if bool(mask.any()):
                self._writer.add_histogram("advantage/tokens", advantages[mask].float(), step)
        self._writer.flush()

    @rlgen.hookimpl
    def rlgen_on_run_end(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class SamplesLogger(rlgen.Callback):
    """Every N steps: completions with each reward's score to ``samples.jsonl``, and a few to the log."""

    name = "samples"
    description = "every N steps write completions with per-reward scores to samples.jsonl and show a few in the log"

    class Params(rlgen.Params):
        every: int = pydantic.Field(10, ge=1, description="log samples every N steps")
        first: bool = pydantic.Field(True, description="also log the samples of step 1")
        max_samples: int | None = pydantic.Field(None, ge=1, description="most completions written per logged step (default: all)")
        show: int = pydantic.Field(2, ge=0, description="completions also shown in the console log")
        show_chars: int = pydantic.Field(160, ge=10, description="characters of a completion shown in the console log")
        file: str = pydantic.Field("samples.jsonl", description="file name inside the run folder")

    def __init__(self, params: pydantic.BaseModel | None = None) -> None:
        super().__init__(params)
        self.path: Path | None = None
        self._trimmed = False

    def setup(self, context: rlgen.RunContext) -> None:
        if context.is_main:
            self.path = Path(context.output_dir) / self.params.file

    def _due(self, step: int) -> bool:
        return step % self.params.every == 0 or (self.params.first and step == 1)

    def _trim(self, step: int) -> None:
        """On the first logged step, drop lines a previous (resumed) run wrote for this step or later."""
        self._trimmed = True
        if self.path is None or not self.path.exists():
            return
        lines = [ln for ln in self.path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        kept = []
        for number, line in enumerate(lines, start=1):
            try:
                line_step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                # a power loss can leave the last line half-written; anything else is damage to show
                if number == len(lines):
                    log.warning("trimmed a torn last line", file=str(self.path), line=number)
                    break
                raise rlgen.PluginError(
                    f"callback '{self.name}': {self.path}:{number}: not a samples line (JSON with a 'step'); "
                    "fix or remove the line"
                ) from None
            if line_step < step:
                kept.append(line)
        self.path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")

    @staticmethod
    def records(
        step: int, rollout: rlgen.Rollout, rewards: dict[str, rlgen.RewardResult], advantages: torch.Tensor
    ) -> list[dict[str, Any]]:
        """One JSON-ready record per completion: text, prompt, each reward's sentence score (and details), advantage."""
        mask = rollout.completion_mask
        sentence = {key: result.to_sentence(mask).tolist() for key, result in rewards.items()}
        n_tokens = mask.sum(dim=1)
        # the sample's advantage: sentence combiners give every token the same value; show the mean
        adv = (advantages * mask).sum(dim=1) / n_tokens.clamp(min=1)
        finish = rollout.extras.get("finish_reason")
        out = []
        for i in range(rollout.batch_size):
            rec: dict[str, Any] = {
                "step": step,
                "index": i,
                "group": int(rollout.group[i]),
                "text": rollout.texts[i],
                "rewards": {key: float(vals[i]) for key, vals in sentence.items()},
                "advantage": float(adv[i]),
                "tokens": int(n_tokens[i]),
            }
            if rollout.prompt_texts is not None:
                rec["prompt"] = rollout.prompt_texts[i]
            if rollout.meta is not None:
                rec["meta"] = rollout.meta[i]
            if finish is not None:
                rec["finish_reason"] = finish[i]
            details = {key: r.details[i] for key, r in rewards.items() if r.details is not None and r.details[i]}
            if details:
                rec["details"] = details
            out.append(rec)
        return out

    @rlgen.hookimpl
    def rlgen_on_step_end(
        self,
        step: int,
        rollout: rlgen.Rollout,
        rewards: dict[str, rlgen.RewardResult],
        advantages: torch.Tensor,
    ) -> None:
        if self.path is None or not self._due(step):
            return
        if not self._trimmed:
            self._trim(step)
        recs = self.records(step, rollout, rewards, advantages)
        if self.params.max_samples is not None:
            recs = recs[: self.params.max_samples]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        for rec in recs[: self.params.show]:
            text = rec["text"]
            if len(text) > self.params.show_chars:
                text = text[: self.params.show_chars] + "..."
            log.info("sample", step=step, group=rec["group"], text=text,
                     rewards={k: round(v, 4) for k, v in rec["rewards"].items()}, advantage=round(rec["advantage"], 4))


@rlgen.hookimpl
def rlgen_callbacks() -> list[type[rlgen.Callback]]:
    return [TensorBoardLogger, SamplesLogger]
