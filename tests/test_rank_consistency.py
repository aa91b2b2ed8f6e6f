"""Collective decisions over real gloo process groups (two processes, no Ray): a rank with nothing
to learn still meets the other in the gradient all-reduce, and both end identical; PPO learners
adapt one learning rate. Without the agreement these runs hang (the join times out)."""

import pytest
import torch

from tests.helpers import spawn_ranks


def _grpo_ranks(rank: int, spread_on: tuple[int, ...]):
    from workloads.distributed import parameter_fingerprint
    from workloads.grpo import GRPOConfig, grpo_step
    from workloads.lm import TinyLMConfig, sample_groups, tiny_lm
    from workloads.strategies import DDPEngine

    model, tokenizer = tiny_lm(TinyLMConfig(tokenizer="qwen2", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                            intermediate_size=64), seed=0)
    before = parameter_fingerprint(model)
    engine = DDPEngine(model, lambda parameters: torch.optim.AdamW(parameters, lr=1e-2))
    rollouts = sample_groups(model, tokenizer, ["Q: 7+5\n"], group_size=4, max_new_tokens=4, generator_seed=rank)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0]) if rank in spread_on else torch.ones(4)
    stats = grpo_step(engine, rollouts, rewards, GRPOConfig(group_size=4, updates_per_batch=2))
    return before, parameter_fingerprint(model), stats["informative_fraction"]


def test_grpo_rank_without_reward_spread_still_steps_with_the_other(tmp_path):
    (before0, after0, informative0), (before1, after1, informative1) = spawn_ranks(_grpo_ranks, tmp_path, (1,))
    assert informative0 == 0.0 and informative1 == 1.0
    assert before0 == before1 and after0 == after1  # identical copies, before and after
    assert after0 != before0  # rank 1's groups moved both copies


def test_grpo_ranks_skip_together_when_no_rank_has_reward_spread(tmp_path):
    (before0, after0, _), (before1, after1, _) = spawn_ranks(_grpo_ranks, tmp_path, ())
    assert before0 == after0 == before1 == after1


def _ppo_ranks(rank: int):
    from workloads.distributed import average_in_place, parameter_fingerprint
    from workloads.ppo import ActorCritic, PPOConfig, RolloutBatch, ppo_update

    torch.manual_seed(0)
    policy = ActorCritic(3, 3, 2, (16,))
    generator = torch.Generator().manual_seed(1000 + rank)  # each learner its own experience
    T, N = 8, 8
    obs = torch.randn(T, N, 3, generator=generator)
    actions, log_probs = policy.act(obs.reshape(-1, 3))
    actions, log_probs = actions.reshape(T, N, 2), log_probs.reshape(T, N)
    rollout = RolloutBatch(obs, obs, actions, log_probs, (rank + 1) * actions.sum(-1),
                           torch.zeros(T, N, dtype=torch.bool), torch.zeros(T, N, dtype=torch.bool), obs, obs[-1])
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    stats = ppo_update(policy, optimizer, rollout, PPOConfig(epochs=2, minibatches=2, desired_kl=1e-4),
                       torch.Generator().manual_seed(0), average_in_place)
    return stats["lr"], parameter_fingerprint(policy)


def test_ppo_learners_adapt_one_learning_rate_and_stay_identical(tmp_path):
    (lr0, fingerprint0), (lr1, fingerprint1) = spawn_ranks(_ppo_ranks, tmp_path)
    assert lr0 == lr1 != 1e-3  # adapted, from the mean KL, the same on both
    assert fingerprint0 == fingerprint1


def _agreement(rank: int):
    from workloads.distributed import (
        all_ranks,
        any_rank,
        gather_objects,
        mean_over_ranks,
    )

    return any_rank(rank == 1), all_ranks(rank == 1), mean_over_ranks(float(rank)), gather_objects(f"r{rank}")


def test_any_all_mean_and_gather_over_two_ranks(tmp_path):
    for result in spawn_ranks(_agreement, tmp_path):
        assert result == (True, False, 0.5, ["r0", "r1"])


def test_without_a_process_group_every_decision_is_the_rank_s_own():
    from workloads.distributed import (
        all_ranks,
        any_rank,
        gather_objects,
        mean_over_ranks,
    )

    assert any_rank(False) is False and all_ranks(True) is True and mean_over_ranks(3.0) == 3.0
    assert gather_objects("x") == ["x"]


def test_grpo_with_a_kl_coefficient_needs_a_reference():
    from workloads.grpo import GRPOConfig, grpo_step
    from workloads.lm import TinyLMConfig, sample_groups, tiny_lm
    from workloads.strategies import LocalEngine

    model, tokenizer = tiny_lm(TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64))
    rollouts = sample_groups(model, tokenizer, ["Q: 1\n"], group_size=2, max_new_tokens=2, generator_seed=0)
    with pytest.raises(ValueError, match="kl_coef > 0 needs a reference model"):
        grpo_step(LocalEngine(model, lambda parameters: torch.optim.SGD(parameters, lr=0.1)), rollouts, torch.tensor([1.0, 0.0]),
                  GRPOConfig(group_size=2, kl_coef=0.1))
