"""PPO's parts by hand: GAE with time-out bootstrapping, the clipped losses, the normaliser, the
adaptive learning rate, and one update that raises the advantage-weighted log-likelihood."""

import math

import numpy as np
import torch

from workloads.ppo import (
    ActorCritic, PPOConfig, RolloutBatch, RunningNormalizer, adapt_lr, gae, next_values, ppo_loss, ppo_update,
)


def test_next_values_bootstrap_time_outs_but_not_terminations():
    values_next = torch.tensor([[5.0, 5.0, 5.0]])
    final = torch.tensor([[7.0, 7.0, 7.0]])
    terminated = torch.tensor([[False, True, False]])
    truncated = torch.tensor([[False, False, True]])
    np.testing.assert_allclose(next_values(values_next, final, terminated, truncated), [[5.0, 0.0, 7.0]])


def test_gae_by_hand():
    # one environment, 3 steps; the episode is cut by a time-out after step 2 (index 1)
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    after = torch.tensor([[1.0], [4.0], [2.0]])  # V(next), V(final obs) at the cut, V(next)
    done = torch.tensor([[False], [True], [False]])
    advantages, returns = gae(rewards, values, after, done, gamma, lam)
    d2 = 3.0 + 0.9 * 2.0 - 1.5
    d1 = 2.0 + 0.9 * 4.0 - 1.0  # no carry across the episode boundary
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    expected = [d0 + gamma * lam * d1, d1, d2]
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(returns[:, 0], np.array(expected) + [0.5, 1.0, 1.5], rtol=1e-6)


def test_normaliser_matches_the_statistics_of_everything_seen():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, (n, 4)) for n in (5, 17, 40)]
    norm = RunningNormalizer(4)
    for chunk in chunks:
        norm.update(torch.tensor(chunk, dtype=torch.float32))
    everything = np.concatenate(chunks)
    np.testing.assert_allclose(norm.mean, everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var, everything.var(0), rtol=1e-4)
    assert float(norm.count) == 62
    assert norm(torch.full((1, 4), 1e6)).max() == norm.clip  # clipped


def test_clipped_surrogate_stops_pushing_past_the_clip():
    torch.manual_seed(0)
    policy = ActorCritic(3, 3, 1, (8,))
    obs = torch.randn(2, 3)
    actions = torch.zeros(2, 1)
    with torch.no_grad():
        log_prob = policy.distribution(obs).log_prob(actions).sum(-1)
    config = PPOConfig(clip=0.2, value_coef=0.0, entropy_coef=0.0)
    batch = {"obs": obs, "critic_obs": obs, "actions": actions, "advantages": torch.tensor([1.0, -1.0]),
             "values": torch.zeros(2), "returns": torch.zeros(2)}
    # sample 0: ratio 1.5 with a positive advantage -> clipped (no gradient); sample 1: ratio 1 -> unclipped
    batch["log_probs"] = log_prob - torch.tensor([math.log(1.5), 0.0])
    loss, stats = ppo_loss(policy, batch, config)
    assert stats["clip_fraction"] == 0.5
    advantages = torch.tensor([1.0, -1.0])  # already mean 0, (population) std 1
    np.testing.assert_allclose(float(loss), -(1.2 * advantages[0] + 1.0 * advantages[1]) / 2, rtol=1e-5)


def test_value_loss_is_the_larger_of_clipped_and_unclipped():
    policy = ActorCritic(2, 2, 1, (4,))
    obs = torch.zeros(1, 2)
    with torch.no_grad():
        value = policy.value(obs)
    config = PPOConfig(value_clip=0.2, value_coef=1.0, entropy_coef=0.0)
    batch = {"obs": obs, "critic_obs": obs, "actions": torch.zeros(1, 1), "advantages": torch.zeros(1),
             "log_probs": policy.distribution(obs).log_prob(torch.zeros(1, 1)).sum(-1).detach(),
             "values": value - 1.0, "returns": value + 1.0}
    _, stats = ppo_loss(policy, batch, config)
    # unclipped error 1, clipped prediction (value - 0.8) has error 1.8: the loss takes 1.8^2
    np.testing.assert_allclose(stats["value_loss"], 1.8**2, rtol=1e-5)


def test_adaptive_lr_follows_the_kl():
    config = PPOConfig(desired_kl=0.01, min_lr=1e-5, max_lr=1e-2)
    assert adapt_lr(1e-3, 0.05, config) == 1e-3 / 1.5
    assert adapt_lr(1e-3, 0.001, config) == 1e-3 * 1.5
    assert adapt_lr(1e-3, 0.01, config) == 1e-3
    assert adapt_lr(1e-2, 0.0001, config) == 1e-2  # bounded
    assert adapt_lr(1e-3, 0.05, PPOConfig(desired_kl=0.0)) == 1e-3


def test_an_update_moves_the_mean_toward_good_actions():
    torch.manual_seed(0)
    T, N = 8, 16
    policy = ActorCritic(2, 2, 1, (16,))
    obs = torch.randn(T, N, 2)
    actions, log_probs = policy.act(obs.reshape(-1, 2))
    actions, log_probs = actions.reshape(T, N, 1), log_probs.reshape(T, N)
    rollout = RolloutBatch(obs=obs, critic_obs=obs, actions=actions, log_probs=log_probs,
                           rewards=actions[..., 0],  # larger actions are better
                           terminated=torch.ones(T, N, dtype=torch.bool), truncated=torch.zeros(T, N, dtype=torch.bool),
                           final_critic_obs=obs, last_critic_obs=obs[-1])
    before = float(policy.distribution(obs.reshape(-1, 2)).mean.mean())
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    stats = ppo_update(policy, optimizer, rollout, PPOConfig(epochs=4, minibatches=2, desired_kl=0.0))
    after = float(policy.distribution(obs.reshape(-1, 2)).mean.mean())
    assert after > before + 0.02, (before, after)
    assert stats["approx_kl"] > 0 and float(policy.obs_norm.count) == T * N  # normalisers took the rollout in
