"""grpo's share_prompt on real DeepSpeed (gloo, one process) and builtin:tiny-llama: each distinct prompt is
forwarded once and its G completions run on its KV cache; log-probs, gradients and updates must match the
prompt + completion forward up to float rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rlgen
from rlgen.config import load_config
from rlgen.discovery import registry
from rlgen_plugins.grpo import GrpoTrainer
from rlgen_plugins.grpo.batching import build_policy_batch
from rlgen_plugins.grpo.shared_prompt import SharedPromptMicroBatch
from rlgen_plugins.prompt_prefix import MIN_SHARED_PREFIX

COMMON = MIN_SHARED_PREFIX + 4  # a beginning long enough to get its own pass

PROMPT_LENGTHS = (4, 7)  # mixed: the shorter prompt is left-padded
G = 5
MICRO_BATCH_SIZE = 4  # 10 rows -> passes of rows 0-3, 4-6, 7-9: both groups are split


@pytest.fixture(scope="module")
def reg():
    return registry()


def make_group_rollout(seed: int, t: int = 8, vocab: int = 600, prefix: int = 0) -> tuple[rlgen.Rollout, torch.Tensor]:
    """len(PROMPT_LENGTHS) prompts x G completions of varied lengths (one with a masked-out token inside); with
    ``prefix``, every prompt starts with the same ``prefix`` tokens (a few-shot template)."""
    g = torch.Generator().manual_seed(seed)
    p = max(PROMPT_LENGTHS) + prefix
    b = len(PROMPT_LENGTHS) * G
    pid = torch.zeros(b, p, dtype=torch.long)
    pm = torch.zeros(b, p, dtype=torch.bool)
    head = torch.randint(3, vocab, (prefix,), generator=g)
    for k, n in enumerate(PROMPT_LENGTHS):
        tokens = torch.cat([head, torch.randint(3, vocab, (n,), generator=g)])
        n += prefix
        pid[k * G:(k + 1) * G, p - n:] = tokens
        pm[k * G:(k + 1) * G, p - n:] = True
    clen = torch.randint(1, t + 1, (b,), generator=g)
    clen[1] = t  # one row uses every column
    cid = torch.zeros(b, t, dtype=torch.long)
    cm = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        cid[i, : clen[i]] = torch.randint(3, vocab, (int(clen[i]),), generator=g)
        cm[i, : clen[i]] = True
    if t > 3:
        cm[1, 2] = False  # a token a post-processor removed: masked where it stands
    adv = torch.randn(b, t, generator=g) * cm
    rollout = rlgen.Rollout(texts=["x"] * b, completion_ids=cid, completion_mask=cm,
                            group=torch.arange(b) // G, prompt_ids=pid, prompt_mask=pm)
    return rollout, adv


def make_trainer(reg, tmp_path: Path, steps: int = 3, **params) -> GrpoTrainer:
    params = {"learning_rate": 1e-3, "micro_batch_size": MICRO_BATCH_SIZE, **params}
    config = load_config({
        "model": {"path": "builtin:tiny-llama"}, "data": {"path": "unused.jsonl"}, "rewards": [{"name": "unused"}],
        "trainer": {"name": "grpo", "params": params}, "run": {"steps": steps, "output_dir": str(tmp_path)},
    })
    from rlgen_plugins.models import default_cache_dir

    ctx = rlgen.RunContext(config=config, registry=reg, output_dir=tmp_path, cache_dir=default_cache_dir(), seed=0)
    trainer = GrpoTrainer(GrpoTrainer.Params(**params))
    trainer.setup(ctx)
    return trainer


def passes(trainer: GrpoTrainer, batch) -> list[torch.Tensor]:
    return [rows for mini in trainer._plan(batch).passes for rows in mini if rows is not None]


def logprobs_and_grads(trainer: GrpoTrainer, rollout, adv, shared: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token log-probs [B, T] and the gradients of sum(adv * logp) through the engine's forward."""
    keyword = trainer.shared_prompt_keyword
    trainer.shared_prompt_keyword = keyword if shared else None
    try:
        batch = build_policy_batch(rollout, adv, plugin="grpo")
        module = trainer.engine.module
        named = [(n, q) for n, q in module.named_parameters() if q.requires_grad]
        logp = torch.zeros(batch.completion_ids.shape)
        total = torch.zeros(())
        for rows in passes(trainer, batch):
            logits, mb = trainer._logits(trainer.engine, batch, rows)
            lp = torch.log_softmax(logits.float(), -1).gather(-1, mb.targets.unsqueeze(-1)).squeeze(-1)
            logp[rows, : mb.width] = lp.detach() * mb.mask
            total = total + (lp * mb.advantages * mb.mask).sum()
        for _, q in named:
            q.grad = None
        # DeepSpeed allows only its own backward; one rank at ZeRO-0 leaves the gradients in .grad
        trainer.engine.set_gradient_accumulation_boundary(False)
        trainer._backward(total)
        grads = {n: q.grad.detach().clone() for n, q in named}
        for _, q in named:
            q.grad = None
        return logp, grads
    finally:
        trainer.shared_prompt_keyword = keyword


def test_micro_batches_forward_each_distinct_prompt_once(reg):
    rollout, adv = make_group_rollout(0)
    batch = build_policy_batch(rollout, adv, plugin="grpo")
    splits = [torch.arange(0, 4), torch.arange(4, 7), torch.arange(7, 10)]
    shared = [SharedPromptMicroBatch.from_rows(batch, rows) for rows in splits]
    assert [s.prompt_ids.shape[0] for s in shared] == [1, 2, 1]
    # rows 4 (group 0) and 5, 6 (group 1) point at their own prompt, with its real tokens only
    mixed = shared[1]
    assert mixed.prompt_of_row[0] != mixed.prompt_of_row[1] == mixed.prompt_of_row[2]
    for row, k in zip((4, 5), mixed.prompt_of_row[:2].tolist()):
        real = mixed.prompt_mask[k].bool()
        assert torch.equal(mixed.prompt_ids[k][real], rollout.prompt_ids[row][rollout.prompt_mask[row]])
    # completions continue each prompt's positions
    assert mixed.completion_positions[0, 0] == PROMPT_LENGTHS[0]
    assert mixed.completion_positions[1, 0] == PROMPT_LENGTHS[1]
    assert all(s.prefix_ids is None for s in shared)  # random prompts share no beginning


def test_a_beginning_the_distinct_prompts_share_runs_once():
    prefix = MIN_SHARED_PREFIX + 2
    rollout, adv = make_group_rollout(0, prefix=prefix)
    batch = build_policy_batch(rollout, adv, plugin="grpo")
    whole = SharedPromptMicroBatch.from_rows(batch, torch.arange(10))
    assert whole.prefix_ids.tolist() == [rollout.prompt_ids[0, -PROMPT_LENGTHS[0] - prefix:][:prefix].tolist()]
    # each distinct prompt keeps the rest, left-padded; positions go on from the prefix
    for k, row in enumerate((0, G)):
        rest = whole.prompt_ids[k][whole.prompt_mask[k, prefix:].bool()]
        assert rest.tolist() == rollout.prompt_ids[row][rollout.prompt_mask[row]][prefix:].tolist()
        assert whole.prompt_positions[k, -1] == prefix + PROMPT_LENGTHS[k] - 1
    assert whole.attention_mask.shape[1] == batch.prompt_len + whole.width - 1
    # one distinct prompt: nothing to share across prompts; a prompt never gives up its last token to the prefix
    assert SharedPromptMicroBatch.from_rows(batch, torch.arange(4)).prefix_ids is None
    short, _ = make_group_rollout(0, prefix=MIN_SHARED_PREFIX - 1)
    short_batch = build_policy_batch(short, adv, plugin="grpo")
    assert SharedPromptMicroBatch.from_rows(short_batch, torch.arange(10)).prefix_ids is None


@pytest.mark.parametrize("prefix", [0, COMMON], ids=["distinct", "common-beginning"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_prompt_logprobs_and_gradients_match_the_concatenated_forward(reg, tmp_path, lora, prefix):
    params = {"beta": 0.0, "share_prompt": True}
    if lora:
        params["lora"] = {"r": 4}
    trainer = make_trainer(reg, tmp_path, **params)
    assert trainer.shared_prompt_keyword is not None
    rollout, adv = make_group_rollout(1, prefix=prefix)
    if lora:
        # B starts at zero, so the adapter would contribute nothing yet: give it weights to differentiate through
        with torch.no_grad():
            for n, q in trainer.engine.module.named_parameters():
                if "lora_B" in n:
                    q.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(3))
    logp_cat, grads_cat = logprobs_and_grads(trainer, rollout, adv, shared=False)
    logp_shared, grads_shared = logprobs_and_grads(trainer, rollout, adv, shared=True)
    torch.testing.assert_close(logp_shared, logp_cat, rtol=0.0, atol=1e-5)
    assert set(grads_shared) == set(grads_cat)
    for name, g in grads_cat.items():
        assert g.abs().max() > 0, name  # every trainable tensor is exercised
        torch.testing.assert_close(grads_shared[name], g, rtol=1e-4, atol=1e-4 * float(g.abs().max()), msg=name)
    trainer.close()


@pytest.mark.parametrize("t,prefix", [(8, 0), (1, 0), (8, COMMON), (1, COMMON)],
                         ids=["completions", "one-token-completions", "common-beginning", "common-beginning-one-token"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_prompt_reference_and_old_logprobs_match(reg, tmp_path, lora, t, prefix):
    params = {"beta": 0.04, "share_prompt": True}
    if lora:
        params["lora"] = {"r": 4}
    trainer = make_trainer(reg, tmp_path, **params)
    # one-token completions: the prompt pass alone predicts everything
    rollout, adv = make_group_rollout(2, t=t, prefix=prefix)
    batch = build_policy_batch(rollout, adv, plugin="grpo")
    plan = trainer._plan(batch)
    keyword = trainer.shared_prompt_keyword
    shared = {which: trainer._frozen_logprobs(batch, plan, which, 0.7) for which in ("old", "ref")}
    trainer.shared_prompt_keyword = None
    concatenated = {which: trainer._frozen_logprobs(batch, plan, which, 0.7) for which in ("old", "ref")}
    trainer.shared_prompt_keyword = keyword
    for which in ("old", "ref"):
        assert bool((shared[which] != 0).any())
        torch.testing.assert_close(shared[which], concatenated[which], rtol=0.0, atol=1e-5, msg=which)
    trainer.close()


@pytest.mark.parametrize("mini_batches,prefix", [(1, 0), (2, 0), (1, COMMON)], ids=["one", "two", "common-beginning"])
@pytest.mark.parametrize("share", [True, False], ids=["shared", "concatenated"])
def test_zero_advantages_leave_the_weights_bitwise_unchanged(reg, tmp_path, share, mini_batches, prefix):
    """pi_ref (a separate copy), pi_old and pi_theta must round identically before any update: the k3 KL
    gradient of last-bit noise is not zero, and Adam's normalisation makes it a learning-rate-sized step."""
    trainer = make_trainer(reg, tmp_path, beta=0.04, share_prompt=share, zero_stage=0, mini_batches=mini_batches)
    assert trainer.ref_model is not None and (trainer.shared_prompt_keyword is not None) == share
    before = {n: q.detach().clone() for n, q in trainer.engine.module.named_parameters()}
    rollout, adv = make_group_rollout(0, prefix=prefix)
    metrics = trainer.step(rollout, torch.zeros_like(adv))
    assert metrics["kl"] == 0.0
    for n, q in trainer.engine.module.named_parameters():
        assert torch.equal(q.detach(), before[n]), n
    trainer.close()


@pytest.mark.parametrize("stage,lora,prefix", [(0, None, 0), (2, None, 0), (0, {"r": 4}, 0), (0, {"r": 4}, COMMON)],
                         ids=["zero0", "zero2", "zero0-lora", "zero0-lora-common-beginning"])
def test_three_steps_with_shared_prompts_stay_with_the_concatenated_run(reg, tmp_path, stage, lora, prefix):
    runs = {}
    for share in (False, True):
        trainer = make_trainer(reg, tmp_path / str(share), beta=0.04, share_prompt=share, zero_stage=stage, lora=lora)
        assert (trainer.shared_prompt_keyword is not None) == share
        metrics = [trainer.step(*make_group_rollout(10 + s, prefix=prefix)) for s in range(3)]
        runs[share] = metrics, {k: v.detach().clone() for k, v in trainer.export_weights()}
        trainer.close()
    (m_cat, w_cat), (m_shared, w_shared) = runs[False], runs[True]
    # the reference pass runs the same shapes as the policy's first pass: the KL starts at exactly zero
    assert m_shared[0]["kl"] == 0.0 and m_cat[0]["kl"] == 0.0
    for a, b in zip(m_cat, m_shared):
        for key in ("loss", "kl", "entropy", "grad_norm", "clip_fraction"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key
    moved = max(float((w_cat[k] - w_shared[k]).abs().max()) for k in w_cat)
    assert moved < 1e-5


@pytest.mark.parametrize("unsupported", [{"gradient_checkpointing": True}, {"zero_stage": 3}], ids=["checkpointing", "zero3"])
def test_shared_prompt_falls_back_where_unsupported(reg, tmp_path, unsupported):
    trainer = make_trainer(reg, tmp_path, beta=0.0, share_prompt=True, **unsupported)
    # checkpointed layers drop the cache; ZeRO-3 gathers parameters per forward: prompt + completion per row
    assert trainer.shared_prompt_keyword is None
    metrics = trainer.step(*make_group_rollout(3))
    assert metrics["updates"] == 1.0
    trainer.close()
