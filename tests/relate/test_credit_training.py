"""Token-level credit beats sentence-level credit at removing blacklisted words (issue 5's training check).

Same seed, data, model (builtin:tiny-llama), sampler and trainer; the only difference is the combiner:
``relate.risk`` under ``relate.credit`` puts -lambda_1 on the offending tokens (Eq. 7, 9), while under ``grpo``
the same reward is demoted to its sentence-level sum and spread over every token after group normalisation
(Eq. 4, 8), as in ablation Models 3/4. The blacklist holds words the random tiny model actually emits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlgen.config import load_config
from rlgen.loop import train

STEPS = 15
BLACKLIST = ["best", "free", "great", "good", "fast", "easy", "new", "every", "one", "day", "and", "for", "our", "from"]


def run(tmp_path: Path, advantage: dict) -> list[float]:
    data = tmp_path / "queries.jsonl"
    queries = ["shoes", "cheap flights", "coffee", "laptops", "hotels", "phones"]
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in queries))
    config = load_config({
        "model": {"path": "builtin:tiny-llama"},
        "data": {"path": str(data), "prompt_template": "Write an ad for {query}", "prompts_per_step": 8},
        "group_size": 4,
        "sampler": {"name": "hf", "params": {"max_new_tokens": 24}},
        "rewards": [{"name": "relate.risk", "weight": 1.0, "params": {"languages": [], "phrases": BLACKLIST}}],
        "advantage": advantage,
        "trainer": {"name": "relate.grpo", "params": {"learning_rate": 5e-3, "beta": 0.0, "micro_batch_size": 16}},
        "run": {"steps": STEPS, "seed": 0, "output_dir": str(tmp_path / advantage["name"]), "save_final": False},
    })
    result = train(config, progress=False)
    return [m["reward/relate.risk/hit_rate"] for m in result.metrics]


@pytest.mark.slow
def test_token_level_credit_lowers_the_hit_rate_faster(tmp_path):
    token = run(tmp_path, {"name": "relate.credit", "params": {"alpha": 1.0}})
    sentence = run(tmp_path, {"name": "grpo", "params": {}})
    assert len(token) == len(sentence) == STEPS
    # the first rollout comes from the same initial policy and seed: a fair start
    assert token[0] == sentence[0] > 0.2
    later_token = sum(token[1:]) / (STEPS - 1)
    later_sentence = sum(sentence[1:]) / (STEPS - 1)
    assert later_token < later_sentence, (token, sentence)
    assert sum(token[-5:]) / 5 < token[0] / 2, token
