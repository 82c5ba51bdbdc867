"""Shipped run presets: RELATE itself and the ablation Models 1-4 of paper Table 2.

Table 2 is one reward set grown a dimension at a time; the four ablation models are derived from
the RELATE preset here rather than kept as five files, so they cannot drift apart.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml

# relate.overflow is the field-length rule of relate.format at token level: the tokens past a limit
STRUCTURAL = ["relate.length", "relate.format", "relate.overflow"]
CTCVR = ["relate.ctcvr"]
# repetition inside one ad (stutter, a phrase said twice) joins diversity across ads: the paper's
# high-frequency n-gram penalty (Eq. 5) read within the ad as well as across the batch
DIVERSITY = ["relate.diversity", "repetition"]
SEMANTIC = ["relate.correctness", "relate.relevance", "relate.risk"]
TOKEN_LEVEL = [*DIVERSITY, "relate.risk", "relate.overflow"]

#: Table 2: reward dimensions of each configuration, and whether credit assignment is on
TABLE_2: dict[str, tuple[list[str], bool]] = {
    "model1": (STRUCTURAL, False),
    "model2": (STRUCTURAL + CTCVR, False),
    "model3": (STRUCTURAL + CTCVR + DIVERSITY, False),
    "model4": (STRUCTURAL + CTCVR + DIVERSITY + SEMANTIC, False),
    "relate": (STRUCTURAL + CTCVR + DIVERSITY + SEMANTIC, True),
}
NAMES = list(TABLE_2)


def relate_preset() -> dict[str, Any]:
    return yaml.safe_load(resources.files(__package__).joinpath("relate.yaml").read_text())


def preset(name: str, *, ctcvr_model: str | None = None) -> dict[str, Any]:
    """The raw config of a Table 2 configuration.

    Models 1-4 keep every reward at sentence level: token-level providers are demoted to their
    sum (Eq. 4) inside ``relate.credit``, which then equals plain GRPO on the summed rewards.
    RELATE keeps diversity, repetition, risk and overflow at token level (Eq. 5, 7, 9). A model's
    ``warm_start.accept`` keeps the gates on rewards it has; `rlgen-relate ablation` starts every model from
    RELATE's warm start instead, as the paper starts every model from one cold-start model.
    """
    if name not in TABLE_2:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(NAMES)}")
    rewards_on, credit = TABLE_2[name]
    raw = copy.deepcopy(relate_preset())
    raw["rewards"] = [r for r in raw["rewards"] if r["name"] in rewards_on]
    # a model's own warm start can gate only on the rewards it has (the ablation gives every model RELATE's instead)
    warm = raw.get("warm_start", {})
    if warm.get("accept"):
        warm["accept"] = {k: v for k, v in warm["accept"].items() if k in rewards_on}
    params = raw["advantage"].setdefault("params", {})
    demote = [] if credit else [r["name"] for r in raw["rewards"] if r["name"] in TOKEN_LEVEL]
    if demote:
        params["demote"] = demote
    raw["run"]["output_dir"] = f"runs/{name}"
    if ctcvr_model is not None:
        for r in raw["rewards"]:
            if r["name"] == "relate.ctcvr":
                r.setdefault("params", {})["model"] = ctcvr_model
    return raw
