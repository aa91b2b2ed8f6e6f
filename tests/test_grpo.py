"""GRPO pieces (workloads/grpo.py) on hand-computed cases and a real tiny model."""

import pytest
import torch

from workloads.grpo import (
    GRPOConfig,
    frozen_reference,
    group_advantages,
    grpo_policy_loss,
    grpo_step,
    k3_kl,
    k3_per_token,
    rollout_logprobs,
)
from workloads.lm import TinyLMConfig, sample_groups, tiny_lm
from workloads.strategies import LocalEngine


def test_policy_loss_clips_asymmetrically():
    advantages = torch.tensor([1.0, -1.0])
    old = torch.zeros(2, 1)
    new = torch.log(torch.tensor([[1.5], [0.5]]))  # ratios 1.5 and 0.5
    # A>0: min(1.5, 1.28) = 1.28; A<0: min(-0.5, -0.8) = -0.8  -> loss = -(1.28 - 0.8) / 2
    assert grpo_policy_loss(new, old, advantages).item() == pytest.approx(-(1.28 - 0.8) / 2)


def test_policy_loss_averages_over_completion_tokens_only():
    advantages = torch.tensor([2.0])
    logprobs = torch.zeros(1, 3)  # ratio 1 everywhere
    mask = torch.tensor([[1, 1, 0]])
    # padding would add another -A term and change the mean if it were counted
    assert grpo_policy_loss(logprobs, logprobs, advantages, mask).item() == pytest.approx(-2.0)


def test_group_advantages_use_the_population_std_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    advantages = group_advantages(rewards, group_size=4)
    # group 1: mean 0.25, std sqrt(3)/4
    std = (3 ** 0.5) / 4
    assert advantages[:4].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std], rel=1e-5)
    assert advantages[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # no spread: no signal


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    mask = torch.ones(1, 2)
    same = torch.tensor([[-1.0, -2.0]])
    assert k3_kl(same, same, mask).item() == pytest.approx(0.0)
    assert k3_kl(torch.tensor([[-0.5, -2.5]]), same, mask).item() > 0


@pytest.fixture(scope="module")
def tiny():
    cfg = TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    return tiny_lm(cfg, seed=0)


def test_sampled_groups_mask_after_eos_and_flag_truncation(tiny):
    model, tokenizer = tiny
    rollouts = sample_groups(model, tokenizer, ["Q: 1+1\n", "Q: 22+3\n"], group_size=3, max_new_tokens=6, generator_seed=0)
    assert rollouts.input_ids.shape[0] == 6 and len(rollouts.texts) == 6
    completion = rollouts.input_ids[:, rollouts.prompt_length:]
    for row in range(6):
        eos = (completion[row] == tokenizer.eos_token_id).nonzero()
        if len(eos):  # everything after the first eos is masked, the eos itself counts
            first = int(eos[0])
            assert rollouts.completion_mask[row, : first + 1].all() and not rollouts.completion_mask[row, first + 1:].any()
            assert not rollouts.truncated[row]
        else:
            assert rollouts.completion_mask[row].all() and rollouts.truncated[row]
    again = sample_groups(model, tokenizer, ["Q: 1+1\n", "Q: 22+3\n"], group_size=3, max_new_tokens=6, generator_seed=0)
    assert torch.equal(again.input_ids, rollouts.input_ids)  # seeded sampling repeats


def adamw(model) -> LocalEngine:
    return LocalEngine(model, lambda parameters: torch.optim.AdamW(parameters, lr=1e-2))


def test_a_grpo_step_raises_the_rewarded_completion_and_lowers_the_rest(tiny):
    model, tokenizer = tiny
    model = type(model)(model.config)
    model.load_state_dict(tiny[0].state_dict())  # a private copy: the fixture stays untouched
    rollouts = sample_groups(model, tokenizer, ["Q: 7+5\n"], group_size=4, max_new_tokens=8, generator_seed=1)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        before = rollout_logprobs(model, rollouts).sum(dim=1)
    stats = grpo_step(adamw(model), rollouts, rewards, GRPOConfig(group_size=4, updates_per_batch=2))
    with torch.no_grad():
        after = rollout_logprobs(model, rollouts).sum(dim=1)
    change = after - before
    assert change[0] > 0 and (change[1:] < change[0]).all()
    assert stats["informative_fraction"] == 1.0 and 0.0 <= stats["clip_fraction"] <= 1.0


def test_a_group_without_reward_spread_changes_nothing(tiny):
    model, tokenizer = tiny
    rollouts = sample_groups(model, tokenizer, ["Q: 7+5\n"], group_size=4, max_new_tokens=4, generator_seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = grpo_step(adamw(model), rollouts, torch.ones(4), GRPOConfig(group_size=4))
    assert stats["informative_fraction"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_k3_is_an_unbiased_estimate_of_kl_to_the_reference():
    """Averaged over tokens drawn from pi (here: every token weighted by its probability), the
    per-token k3 values equal KL(pi || pi_ref) computed directly."""
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05])
    reference = torch.tensor([0.25, 0.25, 0.25, 0.25])
    per_token = k3_per_token(pi.log(), reference.log())
    exact = float(torch.distributions.kl_divergence(torch.distributions.Categorical(probs=pi),
                                                    torch.distributions.Categorical(probs=reference)))
    assert float((pi * per_token).sum()) == pytest.approx(exact, rel=1e-5)
    assert (per_token >= 0).all()  # never negative, unlike the plain log-ratio


def test_a_grpo_step_with_kl_against_a_frozen_reference(tiny):
    model, tokenizer = tiny
    model = type(model)(model.config)
    model.load_state_dict(tiny[0].state_dict())
    reference = frozen_reference(model)
    assert not any(p.requires_grad for p in reference.parameters())
    rollouts = sample_groups(model, tokenizer, ["Q: 7+5\n"], group_size=4, max_new_tokens=8, generator_seed=1)
    engine = adamw(model)
    config = GRPOConfig(group_size=4, updates_per_batch=1, kl_coef=0.5)
    first = grpo_step(engine, rollouts, torch.tensor([1.0, 0.0, 0.0, 0.0]), config, reference)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is still the reference
    with torch.no_grad():  # the second step measures the policy its first step left
        moved = rollout_logprobs(model, rollouts) - rollout_logprobs(reference, rollouts)
    mask = rollouts.completion_mask.float()
    expected = float((((-moved).exp() + moved - 1) * mask).sum() / mask.sum())  # k3 at the policy's tokens
    second = grpo_step(engine, rollouts, torch.tensor([1.0, 0.0, 0.0, 0.0]), config, reference)
    assert second["kl"] > 0 and second["kl"] == pytest.approx(expected, rel=1e-4)
