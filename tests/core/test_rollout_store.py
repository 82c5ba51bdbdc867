"""The rollout in flight of a checkpoint (rlgen.rollout_store): written as safetensors + JSON, read back equal."""

from __future__ import annotations

import pytest
import torch

from rlgen import CheckpointError, Rollout
from rlgen.rollout_store import FIELDS, load_rollout, save_rollout


def rollout(**extras) -> Rollout:
    ids = torch.tensor([[5, 6, 2], [7, 2, 0]])
    return Rollout(
        texts=["ab", "c"], completion_ids=ids, completion_mask=ids != 0, group=torch.tensor([0, 0]),
        prompt_ids=torch.tensor([[1, 3], [1, 3]]), prompt_mask=torch.ones(2, 2, dtype=torch.bool),
        prompt_texts=["p", "p"], meta=[{"query": "q", "n": 1}] * 2, token_offsets=torch.zeros(2, 3, 2, dtype=torch.long),
        logprobs=torch.tensor([[-0.5, -1.25, -3.0], [-0.1, -2.0, 0.0]]), temperature=0.7, staleness=1,
        extras={"lengths": [3, 2], "generate_s": 0.25, "seeds": [2**62 + 1, 3], **extras},
    )


def test_a_saved_rollout_loads_back_equal(tmp_path):
    original = rollout(scores=torch.tensor([0.5, 1.5]))
    save_rollout(original, tmp_path / "r", {"step": 3, "weights_step": 1})
    loaded, info = load_rollout(tmp_path / "r")
    assert info == {"step": 3, "weights_step": 1}
    for name in ("completion_ids", "completion_mask", "group", "prompt_ids", "prompt_mask", "token_offsets", "logprobs"):
        assert getattr(loaded, name).equal(getattr(original, name)) and getattr(loaded, name).dtype == getattr(original, name).dtype
    assert (loaded.texts, loaded.prompt_texts, loaded.meta) == (original.texts, original.prompt_texts, original.meta)
    assert (loaded.temperature, loaded.staleness) == (0.7, 1)
    assert loaded.extras["scores"].equal(original.extras["scores"])
    assert {k: v for k, v in loaded.extras.items() if k != "scores"} == {k: v for k, v in original.extras.items() if k != "scores"}
    assert not list((tmp_path / "r").glob("*.pt")) and not list((tmp_path / "r").glob("*.pkl"))


def test_extras_json_cannot_hold_are_refused_naming_the_key(tmp_path):
    with pytest.raises(CheckpointError, match=r"Rollout.extras\['engine'\] is a object"):
        save_rollout(rollout(engine=object()), tmp_path / "r")


def test_a_torn_rollout_file_is_a_checkpoint_error_naming_the_folder(tmp_path):
    save_rollout(rollout(), tmp_path / "r")
    path = tmp_path / "r" / FIELDS
    path.write_text(path.read_text()[:20])
    with pytest.raises(CheckpointError, match=str(tmp_path / "r")):
        load_rollout(tmp_path / "r")
