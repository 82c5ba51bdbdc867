"""relate.grpo without DeepSpeed: Eq. 6 against an independent computation, batching, config, schedule."""

from __future__ import annotations

import math

import pytest
import torch

import rlgen
from rlgen.config import validate_params
from rlgen.errors import ConfigError
from rlgen_plugins.grpo import GrpoTrainer
from rlgen_plugins.grpo.batching import build_policy_batch, split_rows
from rlgen_plugins.grpo.engine import build_ds_config, lr_multiplier, merge_config
from rlgen_plugins.grpo.loss import (
    AGGREGATIONS, aggregate, grpo_loss, k3_kl, token_entropy, token_logprobs, token_logprobs_and_entropy,
)

EPS_LOW, EPS_HIGH, BETA = 0.2, 0.28, 0.1


def reference_eq6(logp, old, ref, adv, mask, mode):
    """Negative Eq. 6 written out token by token with Python scalars (float64 autograd through torch scalars)."""
    seq_values, seq_lengths = [], []
    for i in range(logp.shape[0]):
        total, n = 0.0, 0
        for t in range(logp.shape[1]):
            if not bool(mask[i, t]):
                continue
            rho = torch.exp(logp[i, t] - old[i, t])
            a = float(adv[i, t])
            rho_clipped = min(max(float(rho.detach()), 1 - EPS_LOW), 1 + EPS_HIGH)
            # min(rho A, clip(rho) A); the clipped branch is a constant
            surrogate = rho * a if rho * a <= rho_clipped * a else torch.tensor(rho_clipped * a, dtype=torch.float64)
            r = torch.exp(ref[i, t] - logp[i, t])  # pi_ref / pi_theta
            kl = r - torch.log(r) - 1
            total = total + surrogate - BETA * kl
            n += 1
        seq_values.append(total)
        seq_lengths.append(n)
    if mode == "token-mean":
        value = sum(seq_values) / sum(seq_lengths)
    elif mode == "seq-mean-token-mean":
        value = sum(v / max(n, 1) for v, n in zip(seq_values, seq_lengths)) / len(seq_values)
    else:  # seq-mean-token-sum: 1/G sum_i sum_t, averaged over the batch
        value = sum(seq_values) / len(seq_values)
    return -value


def random_inputs(seed=0, b=5, t=7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    logp = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.4  # |log rho| ~ 0.4: clipping active
    ref = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    lengths = torch.tensor([t, 3, 5, 1, 6])[:b]
    mask = torch.arange(t)[None, :] < lengths[:, None]
    adv = torch.randn(b, t, generator=g, dtype=torch.float64) * mask
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_loss_and_gradient_match_eq6_written_out(mode):
    logp, old, ref, adv, mask = random_inputs()
    rho = torch.exp(logp - old)
    # the inputs exercise both clip edges
    assert bool(((adv > 0) & (rho > 1 + EPS_HIGH) & mask).any())
    assert bool(((adv < 0) & (rho < 1 - EPS_LOW) & mask).any())

    mine = logp.clone().requires_grad_(True)
    out = grpo_loss(mine, old, adv, mask, ref_logp=ref, beta=BETA, eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation=mode)
    out.loss.backward()

    theirs = logp.clone().requires_grad_(True)
    expected = reference_eq6(theirs, old, ref, adv, mask, mode)
    expected.backward()

    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-12)
    # no gradient leaks from padding
    assert bool((mine.grad[~mask] == 0).all())
    # clipped tokens: exactly those where the clipped branch is strictly smaller
    clipped_ref = torch.minimum(rho * adv, rho.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * adv) < rho * adv
    assert torch.equal(out.clipped, clipped_ref & mask)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_global_denominators_make_parts_sum_to_the_whole(mode):
    """Micro-batches (and ranks) with global counts add up to the loss of the whole batch."""
    logp, old, ref, adv, mask = random_inputs(seed=1)
    whole = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=BETA, eps_low=EPS_LOW, eps_high=EPS_HIGH,
                      aggregation=mode).loss
    parts = 0.0
    for rows in split_rows(torch.arange(5), 3):
        parts += grpo_loss(logp[rows], old[rows], adv[rows], mask[rows], ref_logp=ref[rows], beta=BETA,
                           eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation=mode,
                           num_sequences=5, num_tokens=float(mask.sum())).loss
    assert float(parts) == pytest.approx(float(whole), rel=1e-12)


def test_token_level_advantage_moves_only_its_token():
    logp, old, _, _, mask = random_inputs(seed=2)
    adv = torch.zeros_like(logp)
    adv[0, 2] = 1.0
    x = old.clone().requires_grad_(True)  # rho = 1: nothing clipped
    grpo_loss(x, old, adv, mask, aggregation="token-mean").loss.backward()
    nonzero = (x.grad != 0).nonzero().tolist()
    assert nonzero == [[0, 2]]
    assert x.grad[0, 2] < 0  # minimising the loss raises the log-prob of the rewarded token


def test_k3_is_zero_at_equality_and_positive_elsewhere():
    a = torch.randn(100, dtype=torch.float64)
    assert torch.equal(k3_kl(a, a), torch.zeros_like(a))
    b = a + torch.randn(100, dtype=torch.float64)
    assert bool((k3_kl(a, b) > 0).all())
    # unbiased: E_{x ~ p}[k3] = KL(p || q) for two categorical distributions
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    expected = float((p * (p / q).log()).sum())
    assert float((p * k3_kl(p.log(), q.log())).sum()) == pytest.approx(expected, rel=1e-12)


def test_logprobs_and_entropy_match_torch_distributions():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 11, generator=g)
    targets = torch.randint(0, 11, (2, 4), generator=g)
    dist = torch.distributions.Categorical(logits=logits / 0.7)
    torch.testing.assert_close(token_logprobs(logits, targets, temperature=0.7), dist.log_prob(targets))
    torch.testing.assert_close(token_entropy(logits, temperature=0.7), dist.entropy())
    # the trainer's shared-logsumexp version: bitwise both of them, gradient for the log-probs only
    for temperature in (1.0, 0.7):
        leaf = logits.clone().requires_grad_(True)
        logp, entropy = token_logprobs_and_entropy(leaf, targets, temperature=temperature)
        assert torch.equal(logp, token_logprobs(logits, targets, temperature=temperature))
        assert torch.equal(entropy, token_entropy(logits, temperature=temperature))
        assert logp.requires_grad and not entropy.requires_grad


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), "sum")  # type: ignore[arg-type]


# -- batching ---------------------------------------------------------------------------------


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_left_padded_batch_gives_the_log_probs_of_each_unpadded_sequence():
    model = tiny_llama()
    prompts = [[5, 6, 7, 8], [9, 10], [11]]
    completions = [[12, 13], [14, 15, 16, 17], [18, 19, 20]]
    p, t = 4, 4
    pid = torch.zeros(3, p, dtype=torch.long)
    pm = torch.zeros(3, p, dtype=torch.bool)
    cid = torch.full((3, t), 1, dtype=torch.long)
    cm = torch.zeros(3, t, dtype=torch.bool)
    for i, (pr, co) in enumerate(zip(prompts, completions)):
        pid[i, p - len(pr):] = torch.tensor(pr)
        pm[i, p - len(pr):] = True
        cid[i, : len(co)] = torch.tensor(co)
        cm[i, : len(co)] = True
    rollout = rlgen.Rollout(texts=["x"] * 3, completion_ids=cid, completion_mask=cm, group=torch.zeros(3, dtype=torch.long),
                            prompt_ids=pid, prompt_mask=pm)
    batch = build_policy_batch(rollout, torch.ones(3, t) * cm, plugin="relate.grpo")
    mb = batch.micro(torch.tensor([1, 2]))  # rows 1-2: their shared left padding is trimmed
    assert mb.input_ids.shape[1] == 2 + 4
    with torch.no_grad():
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                       logits_to_keep=mb.width + 1).logits[:, :-1]
        batched = token_logprobs(logits, mb.targets)
        for j, i in enumerate([1, 2]):
            ids = torch.tensor([prompts[i] + completions[i]])
            alone = torch.log_softmax(model(input_ids=ids).logits[0], -1)
            n, k = len(prompts[i]), len(completions[i])
            expected = alone[n - 1 : n - 1 + k].gather(1, ids[0, n:, None]).squeeze(1)
            torch.testing.assert_close(batched[j, :k], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(mb.mask, cm[[1, 2]])


def test_rollout_without_prompt_ids_is_refused_by_name():
    r = rlgen.Rollout(texts=["a"], completion_ids=torch.ones(1, 2, dtype=torch.long),
                      completion_mask=torch.ones(1, 2, dtype=torch.bool), group=torch.zeros(1, dtype=torch.long))
    with pytest.raises(rlgen.PluginError, match="relate.grpo.*prompt_ids"):
        build_policy_batch(r, torch.zeros(1, 2), plugin="relate.grpo")


# -- params, DeepSpeed config, schedule ------------------------------------------------------


def test_params_errors_name_the_plugin_and_field():
    with pytest.raises(ConfigError, match=r"relate.grpo.*trainer.params.epoch"):
        validate_params(GrpoTrainer, {"epoch": 2}, origin="cfg.yaml", key="trainer", name="relate.grpo")
    with pytest.raises(ConfigError, match="offload_params needs zero_stage 3"):
        validate_params(GrpoTrainer, {"offload_params": True, "zero_stage": 2}, origin="cfg.yaml", key="trainer",
                        name="relate.grpo")
    params = validate_params(GrpoTrainer, {"lora": {"r": 4}, "loss_aggregation": "token-mean"}, origin="c",
                             key="trainer", name="relate.grpo")
    assert params.lora.r == 4 and params.lora.target_modules == "all-linear"
    assert all(f.description for f in GrpoTrainer.Params.model_fields.values())


def ds_config(**overrides):
    args = dict(zero_stage=2, precision="fp32", micro_batch_size=4, world_size=2, learning_rate=1e-5, betas=(0.9, 0.99),
                eps=1e-8, weight_decay=0.0, max_grad_norm=1.0, optimizer="torch", offload_optimizer=False,
                offload_params=False, pin_memory=False)
    args.update(overrides)
    return build_ds_config(**args)


def test_ds_config_switches():
    cpu = ds_config()
    assert cpu["optimizer"]["params"]["torch_adam"] is True  # nothing JIT-builds
    assert cpu["zero_optimization"] == {"stage": 2}
    assert cpu["train_batch_size"] == 8 and cpu["gradient_clipping"] == 1.0
    assert not cpu["bf16"]["enabled"] and not cpu["fp16"]["enabled"]
    gpu = ds_config(precision="bf16", optimizer="deepspeed", offload_optimizer=True, zero_stage=3,
                    offload_params=True, pin_memory=True)
    assert gpu["bf16"]["enabled"] and "torch_adam" not in gpu["optimizer"]["params"]
    assert gpu["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert gpu["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert "zero_force_ds_cpu_optimizer" not in gpu
    torch_offload = ds_config(offload_optimizer=True)
    assert torch_offload["zero_force_ds_cpu_optimizer"] is False
    assert ds_config(optimizer="torch-fused")["optimizer"]["params"]["fused"] is True
    # torch's fused AdamW where it has a kernel for the device holding the states (CPU when offloaded)
    assert cpu["optimizer"]["params"]["fused"] is True
    assert "fused" not in ds_config(device_type="hpu")["optimizer"]["params"]
    assert ds_config(device_type="hpu", offload_optimizer=True)["optimizer"]["params"]["fused"] is True
    assert ds_config(device_type="hpu", optimizer="torch-fused")["optimizer"]["params"]["fused"] is True
    merged = ds_config(extra={"zero_optimization": {"overlap_comm": True}, "steps_per_print": 10})
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True} and merged["steps_per_print"] == 10
    assert merge_config({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


def test_lr_schedule():
    assert [lr_multiplier(k, warmup=3, total=10, schedule="constant") for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    lin = [lr_multiplier(k, warmup=0, total=4, schedule="linear", min_ratio=0.2) for k in range(6)]
    assert lin == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
    cos = [lr_multiplier(k, warmup=2, total=6, schedule="cosine") for k in range(2, 7)]
    assert cos == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])
