"""The ``vllm`` sampler in server mode against a real (CPU) vLLM server that the sampler starts.

Sampling at temperature 0.7: log-probs equal the policy's ``log_softmax(logits / T)``, each
sample depends only on its seed, stop strings end completions, trainer steps reach the
server through the weights folder, and a second sampler can attach to the running server.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import torch

vllm = pytest.importorskip("vllm")

import rlgen  # noqa: E402
from rlgen_plugins.models import load_causal_lm  # noqa: E402
from rlgen_plugins.samplers.vllm import VLLMSampler  # noqa: E402
from torch_trainer import TorchPG, completion_logprobs  # noqa: E402

PROMPTS = [
    rlgen.Prompt([{"role": "user", "content": "Write an ad for shoes"}], {"query": "shoes"}),
    rlgen.Prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write an ad for cheap flights to London"}], {"query": "flights"}),
    rlgen.Prompt([{"role": "user", "content": "Write an ad for coffee"}], {"query": "coffee"}),
]
PARAMS = {"mode": "server", "temperature": 0.7, "max_new_tokens": 16, "stop": [","]}
GROUP = 6


@pytest.fixture(scope="module")
def served(make_context, vllm_chatty: Path) -> Iterator[VLLMSampler]:
    sampler = VLLMSampler(VLLMSampler.Params(**PARAMS))
    sampler.setup(make_context(str(vllm_chatty)))
    yield sampler
    sampler.close()


def test_rollout_contract_with_stop_strings(served: VLLMSampler) -> None:
    ro = served.generate(PROMPTS, GROUP, seed=11)
    tok, eos = served.tokenizer, served.tokenizer.eos_token_id
    assert ro.batch_size == len(PROMPTS) * GROUP and ro.group.tolist() == [k for k in range(3) for _ in range(GROUP)]
    assert [m["query"] for m in ro.meta] == [p.meta["query"] for p in PROMPTS for _ in range(GROUP)]
    reasons = Counter(ro.extras["finish_reason"])
    assert reasons["eos"] > 0 and reasons["stop"] > 0, reasons
    for i in range(ro.batch_size):
        n = int(ro.completion_mask[i].sum())
        body = ro.completion_ids[i, :n].tolist()
        assert ro.completion_mask[i, :n].all() and not ro.completion_mask[i, n:].any()
        assert "," not in ro.texts[i]
        if ro.extras["finish_reason"][i] == "eos":
            assert body[-1] == eos and eos not in body[:-1] and ro.texts[i] == tok.decode(body, skip_special_tokens=True)
        elif ro.extras["finish_reason"][i] == "stop":  # the last token completes the stop string
            assert "," in tok.decode(body) and "," not in tok.decode(body[:-1])
        for k in range(n):
            a, e = ro.token_offsets[i, k].tolist()
            assert 0 <= a <= e <= len(ro.texts[i])


def test_logprobs_are_the_policy_log_probs_under_the_temperature(served: VLLMSampler, vllm_chatty: Path) -> None:
    ro = served.generate(PROMPTS, 2, seed=5)
    with torch.no_grad():
        want = completion_logprobs(load_causal_lm(vllm_chatty), ro, temperature=0.7)
    mask = ro.completion_mask
    torch.testing.assert_close(ro.logprobs[mask], want[mask], atol=1e-4, rtol=0)
    assert (ro.logprobs[~mask] == 0).all() and ro.temperature == 0.7


def test_each_sample_depends_only_on_its_seed(served: VLLMSampler) -> None:
    a = served.generate(PROMPTS, 4, seed=3)
    b = served.generate(PROMPTS, 4, seed=3)
    c = served.generate(PROMPTS, 4, seed=4)
    alone = served.generate(PROMPTS[:1], 4, seed=3)  # prompt 0's samples without the rest of the batch
    assert a.texts == b.texts and torch.equal(a.completion_ids, b.completion_ids)
    assert a.texts != c.texts
    assert alone.texts == a.texts[:4]
    assert len(set(a.texts[:4])) > 1, "samples of one prompt must differ"


def test_trainer_step_reaches_the_server_and_a_second_sampler_can_attach(
    served: VLLMSampler, make_context, vllm_chatty: Path
) -> None:
    trainer = TorchPG(TorchPG.Params(learning_rate=2e-3), model=load_causal_lm(vllm_chatty))
    before = served.generate(PROMPTS, 2, seed=9)
    trainer.step(before, torch.where(before.group == 0, 1.0, -1.0)[:, None] * before.completion_mask.float())
    metrics = served.sync_weights(trainer)
    assert metrics["sync_tensors"] == len(trainer.model.state_dict())
    assert metrics["sync_write_s"] > 0 and metrics["sync_load_s"] > 0 and metrics["sync_s"] >= metrics["sync_load_s"]
    weights = served._engine.weights_dir
    assert list(weights.glob("model-*.safetensors")) and weights.parent.name == "vllm"

    after = served.generate(PROMPTS, 2, seed=9)
    with torch.no_grad():
        trained = completion_logprobs(trainer.model, after, temperature=0.7)
        untrained = completion_logprobs(load_causal_lm(vllm_chatty), after, temperature=0.7)
    mask = after.completion_mask
    torch.testing.assert_close(after.logprobs[mask], trained[mask], atol=1e-4, rtol=0)
    assert (trained - untrained)[mask].abs().max() > 1e-2

    attached = VLLMSampler(VLLMSampler.Params(**{**PARAMS, "server_url": served._engine.base}))
    attached.setup(make_context(str(vllm_chatty)))
    try:
        assert attached._engine.proc is None
        assert attached.generate(PROMPTS, 2, seed=9).texts == after.texts
    finally:
        attached.close()
    assert served._engine.proc.poll() is None, "closing an attached sampler must leave the server running"


def test_close_stops_the_server_it_started(make_context, vllm_chatty: Path, served: VLLMSampler) -> None:
    engine = served._engine
    log = engine.log_path
    served.close()
    assert engine.proc.poll() is not None
    assert log.is_file() and log.parent.name == "vllm" and "--logprobs-mode" in (log.parent / "server_command.txt").read_text()
    with pytest.raises(rlgen.PluginError, match="setup"):
        served.generate(PROMPTS, 1, seed=0)
