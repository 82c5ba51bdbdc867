"""Resume never runs code from a run folder: a crafted pickle in any checkpoint file is refused by name.

The attacker here also rewrites the manifest, so the file passes the integrity check and the
refusal has to come from the load itself (weights_only=True with a small allow-list).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import rlgen
from conftest import copy_run, run_tiny

# every pickle-format file in a checkpoint of the tiny run (the test checks the list is complete)
PICKLE_FILES = [
    "plugins.pt",
    "trainer/deepspeed/state/mp_rank_00_model_states.pt",
    "trainer/deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "trainer/deepspeed/rng_rank0.pt",
]


class Payload:
    """Unpickling this with code execution writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def plant(path: Path, marker: Path) -> None:
    torch.save({"module": Payload(marker), "optimizer_state_dict": Payload(marker)}, path)


def forge_manifest(checkpoint: Path, rel: str) -> None:
    """What an attacker who edits the file would do to the manifest too (if the checkpoint has one)."""
    if not (checkpoint / "manifest.json").exists():
        return
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = (checkpoint / rel).read_bytes()
    manifest["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("rel", PICKLE_FILES)
def test_crafted_pickle_is_refused_on_resume_and_never_runs(straight_run, tmp_path, rel):
    raw, run = straight_run
    cfg = copy_run(run, tmp_path / "run", raw)
    latest = tmp_path / "run" / "checkpoints" / "step-000003"
    assert {p.relative_to(latest).as_posix() for p in latest.rglob("*.pt")} == set(PICKLE_FILES)
    marker = tmp_path / "payload-ran"
    plant(latest / rel, marker)
    forge_manifest(latest, rel)

    with pytest.raises(rlgen.RlgenError) as refused:
        run_tiny(cfg, steps=4, resume=True)
    message = str(refused.value)
    assert str(latest / rel) in message and "refused to load" in message
    assert "Unsupported global: exec" in message  # names what the file asked for
    assert not marker.exists()
    # the file was a live attack: an unsafe load (DeepSpeed's own torch.load(weights_only=False)) runs it
    torch.load(latest / rel, weights_only=False)
    assert marker.read_text() == "payload ran"
