"""Validation during training, and the policy that scored best on it (the ``validation`` config section).

A policy-gradient run at a small batch does not improve monotonically: the RELATE demo's compliance moved by
18 points between the checkpoints of steps 48 and 64 of one run. Scoring held-out contexts every few steps and
keeping the policy that scored best hands over that policy instead of wherever the last updates left the
weights. The validation is ``rlgen eval`` itself on other contexts (fresh reward instances, the same sampling
seeds every time, so two validations differ only by the weights), and its contexts must not be the ``eval``
contexts: a policy selected on its test set leaves the test saying nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import session
from .config import RunConfig
from .data import PromptSource
from .discovery import Registry
from .errors import ConfigError
from .logs import get_logger

log = get_logger("rlgen.validation")

#: the run folder's export of the best validated policy, beside ``policy/`` (the last one)
BEST_POLICY = "best_policy"
#: inside ``best_policy/``: the step, metric and value it was selected for
SELECTION_FILE = "selection.json"
#: the prefix of validation metrics in ``metrics.jsonl``
PREFIX = "validation/"


def validation_config(config: RunConfig) -> RunConfig:
    """``config`` with its ``eval`` section pointed at the validation contexts, so the one evaluation runs on them."""
    val = config.validation
    ev = config.eval.model_copy(update={
        "data": val.data, "split": val.split if val.split is not None else config.eval.split, "limit": val.limit,
        "samples_per_context": val.samples_per_context, "batch_prompts": val.batch_prompts, "every": 0,
    })
    return config.model_copy(update={"eval": ev})


def _prompts(source: PromptSource) -> set[str]:
    return {source.prompt(r).text for r in source.records}


def check_held_out(config: RunConfig, registry: Registry, training: PromptSource) -> None:
    """Refuse validation contexts that ``eval`` also scores when a policy is selected on them; warn about
    validation contexts the run trains on (their scores flatter the policy, and the selection with them)."""
    val = config.validation
    if not val.every:
        return
    if val.data is None and not config.data.path.startswith("builtin:"):
        raise ConfigError(
            f"{config.origin}: validation.split '{val.split}' names a split of a builtin dataset, but data.path "
            f"{config.data.path} is a file; set validation.data to a file of held-out contexts"
        )
    where = f"validation.{'data' if val.data else 'split'} ({val.data or val.split})"
    held = _prompts(session.eval_contexts(validation_config(config), registry))
    if val.keep_best is not None:
        shared = held & _prompts(session.eval_contexts(config, registry))
        if shared:
            raise ConfigError(
                f"{config.origin}: {where} shares {len(shared)} of its {len(held)} contexts with the eval contexts "
                f"(eval.{'data' if config.eval.data else 'split'}): validation.keep_best would select the policy on "
                "its own test set; validate on contexts that eval does not score"
            )
    trained = held & _prompts(training)
    if trained:
        log.warning("validation contexts the run also trains on", where=where, shared=len(trained), of=len(held))


@dataclass
class BestSoFar:
    """The best value of ``metric`` over a run's validations (``mode`` max or min) and its step."""

    metric: str
    mode: str
    step: int | None = None
    value: float | None = None

    @classmethod
    def from_config(cls, config: RunConfig) -> "BestSoFar | None":
        val = config.validation
        return cls(val.keep_best, val.mode) if val.keep_best is not None else None

    def read(self, summary: dict[str, dict[str, float]], origin: str) -> float:
        """The metric's mean in an evaluation summary; an unknown name lists the ones there are."""
        if self.metric not in summary:
            raise ConfigError(
                f"{origin}: validation.keep_best '{self.metric}' is not a metric of the evaluation; it has: "
                f"{', '.join(sorted(summary))}"
            )
        return float(summary[self.metric]["mean"])

    def improves(self, value: float) -> bool:
        """Strictly better than every earlier validation (a tie keeps the earlier, cheaper-to-reach policy)."""
        if math.isnan(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.mode == "max" else value < self.value

    def record(self, step: int, value: float) -> None:
        self.step, self.value = step, value

    def replay(self, history: Iterable[dict[str, Any]]) -> None:
        """Rebuild the state from ``metrics.jsonl`` lines (a resumed run: the lines up to its checkpoint)."""
        key = PREFIX + self.metric
        for line in history:
            if key in line and self.improves(float(line[key])):
                self.record(int(line["step"]), float(line[key]))

    def selection(self) -> dict[str, Any]:
        return {"step": self.step, "metric": self.metric, "mode": self.mode, "value": self.value}


def write_selection(folder: Path, best: BestSoFar) -> None:
    (folder / SELECTION_FILE).write_text(json.dumps(best.selection(), indent=2) + "\n")


def read_selection(folder: Path) -> dict[str, Any] | None:
    """``best_policy/selection.json`` of a run folder, or None when the run kept no best policy."""
    path = Path(folder) / BEST_POLICY / SELECTION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg}); delete {path.parent} to let the run select again") from None
