"""PPO for continuous control, in plain torch: the asymmetric actor-critic, GAE with time-out
bootstrapping, the clipped surrogate and value losses, and an adaptive-KL learning rate.

Rollouts arrive as (T, N, ...) blocks collected elsewhere (by rollout workers that ran the
actor themselves), which is why this is not rsl-rl's OnPolicyRunner: that runner steps the
environment from inside the learner, one step at a time. The update rules follow rsl-rl's PPO.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass
class PPOConfig:
    """PPO's update: GAE, clipped surrogate and value losses, adaptive-KL learning rate."""

    gamma: float = 0.99  # discount
    lam: float = 0.95  # GAE lambda
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # value clip around the old values
    value_coef: float = 1.0  # value loss weight
    entropy_coef: float = 0.005  # entropy bonus weight
    lr: float = 1e-3  # Adam learning rate (adapted to the KL)
    epochs: int = 5  # passes over each rollout
    minibatches: int = 4  # minibatches per pass
    max_grad_norm: float = 1.0  # gradient clipping norm
    desired_kl: float = 0.01  # 0: a fixed learning rate
    min_lr: float = 1e-5  # lower bound of the adaptive learning rate
    max_lr: float = 1e-2  # upper bound of the adaptive learning rate


@dataclasses.dataclass
class RolloutBatch:
    """(T, N) blocks of experience from N environments over T steps: numpy arrays as rollout
    workers write them, torch tensors (`to_torch`) as the learner reads them."""

    obs: Any  # (T, N, obs_dim): the policy's observation at each step
    critic_obs: Any  # (T, N, critic_dim): the critic's privileged observation
    actions: Any  # (T, N, action_dim)
    log_probs: Any  # (T, N): of the actions, under the policy that collected them
    rewards: Any  # (T, N)
    terminated: Any  # (T, N) bool: the episode ended (no bootstrapping)
    truncated: Any  # (T, N) bool: the episode was cut by its time limit (bootstrap from final_critic_obs)
    final_critic_obs: Any  # (T, N, critic_dim): the last critic observation of episodes that ended at t
    last_critic_obs: Any  # (N, critic_dim): the critic observation after the last step

    @classmethod
    def zeros(cls, steps: int, n: int, obs_dim: int, critic_dim: int, action_dim: int) -> "RolloutBatch":
        f32 = np.float32
        return cls(np.zeros((steps, n, obs_dim), f32), np.zeros((steps, n, critic_dim), f32),
                   np.zeros((steps, n, action_dim), f32), np.zeros((steps, n), f32), np.zeros((steps, n), f32),
                   np.zeros((steps, n), bool), np.zeros((steps, n), bool), np.zeros((steps, n, critic_dim), f32),
                   np.zeros((n, critic_dim), f32))

    @classmethod
    def concat(cls, batches: Sequence["RolloutBatch"]) -> "RolloutBatch":
        """Batches side by side along the environment axis."""
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in batches], axis=0 if f.name == "last_critic_obs" else 1)
                      for f in dataclasses.fields(cls)})

    def to_torch(self, device: torch.device | str = "cpu") -> "RolloutBatch":
        return RolloutBatch(**{f.name: torch.as_tensor(getattr(self, f.name)).to(device) for f in dataclasses.fields(self)})

    @property
    def num_steps(self) -> int:
        return int(np.prod(self.rewards.shape))


class RunningNormalizer(nn.Module):
    """Per-feature running mean and variance (batched Chan/Welford updates); clipped outputs."""

    def __init__(self, dim: int, clip: float = 5.0, eps: float = 1e-2):
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.mean.dtype)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total).float()
        self.var = (self.var * (self.count / total).float() + batch_var * (n / total).float()
                    + delta**2 * (self.count * n / total**2).float())
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp((x - self.mean) / torch.sqrt(self.var + self.eps), -self.clip, self.clip)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """A Gaussian actor on the policy observation; a critic on the privileged observation."""

    def __init__(self, obs_dim: int, critic_dim: int, action_dim: int, hidden: tuple[int, ...] = (128, 128),
                 init_std: float = 0.5):
        super().__init__()
        self.obs_norm, self.critic_norm = RunningNormalizer(obs_dim), RunningNormalizer(critic_dim)
        self.actor = mlp([obs_dim, *hidden, action_dim])
        self.critic = mlp([critic_dim, *hidden, 1])
        self.log_std = nn.Parameter(torch.full((action_dim,), float(torch.log(torch.tensor(init_std)))))
        with torch.no_grad():  # small initial means: start near the default pose / posture
            self.actor[-1].weight.mul_(0.01)
            self.actor[-1].bias.zero_()

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.actor(self.obs_norm(obs))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False)

    def value(self, critic_obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.critic_norm(critic_obs)).squeeze(-1)

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions, their log-probabilities summed over action dimensions). Written out rather
        than through `distribution()`: rollout workers call it every control step."""
        mean = self.actor(self.obs_norm(obs))
        noise = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
        actions = mean + self.log_std.exp() * noise
        log_prob = (-0.5 * noise**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return actions, log_prob


def next_values(values_next: torch.Tensor, final_values: torch.Tensor, terminated: torch.Tensor,
                truncated: torch.Tensor) -> torch.Tensor:
    """The value after each step: 0 after a termination, V(final observation) after a time-out
    (bootstrapping: the episode was cut, not ended), V(next observation) otherwise. (T, N) each."""
    bootstrap = torch.where(truncated, final_values, values_next)
    return torch.where(terminated, torch.zeros_like(bootstrap), bootstrap)


def gae(rewards: torch.Tensor, values: torch.Tensor, after: torch.Tensor, done: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over (T, N) blocks; `after` from next_values."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * after[t] - values[t]
        running = delta + gamma * lam * (~done[t]).float() * running
        advantages[t] = running
    return advantages, advantages + values


def ppo_loss(policy: ActorCritic, batch: dict[str, torch.Tensor], config: PPOConfig) -> tuple[torch.Tensor, dict]:
    dist = policy.distribution(batch["obs"])
    log_prob = dist.log_prob(batch["actions"]).sum(-1)
    ratio = torch.exp(log_prob - batch["log_probs"])
    advantages = batch["advantages"]
    advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)
    surrogate = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - config.clip, 1 + config.clip) * advantages).mean()
    value = policy.value(batch["critic_obs"])
    clipped = batch["values"] + torch.clamp(value - batch["values"], -config.value_clip, config.value_clip)
    value_loss = torch.max((value - batch["returns"]) ** 2, (clipped - batch["returns"]) ** 2).mean()
    entropy = dist.entropy().sum(-1).mean()
    loss = surrogate + config.value_coef * value_loss - config.entropy_coef * entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1) - torch.log(ratio)).mean()  # k3 estimator of KL(old || new)
        clip_fraction = ((ratio - 1).abs() > config.clip).float().mean()
    return loss, {"surrogate": float(surrogate.detach()), "value_loss": float(value_loss.detach()), "entropy": float(entropy.detach()),
                  "approx_kl": float(approx_kl), "clip_fraction": float(clip_fraction)}


def adapt_lr(lr: float, kl: float, config: PPOConfig) -> float:
    """rsl-rl's schedule: shrink the step when the policy moved too far, grow it when too little."""
    if config.desired_kl <= 0:
        return lr
    if kl > 2.0 * config.desired_kl:
        lr = lr / 1.5
    elif 0.0 < kl < 0.5 * config.desired_kl:
        lr = lr * 1.5
    return min(config.max_lr, max(config.min_lr, lr))


def ppo_update(policy: ActorCritic, optimizer: torch.optim.Optimizer, rollout: RolloutBatch,
               config: PPOConfig, generator: torch.Generator | None = None,
               average_across_learners: Callable[[list[torch.Tensor]], None] | None = None) -> dict[str, float]:
    """GAE, then `epochs` x `minibatches` clipped PPO steps with the adaptive learning rate, then
    the observation normalisers take in the rollout.

    `rollout` holds torch tensors (`RolloutBatch.to_torch`). With several learners,
    `average_across_learners` averages tensors in place across them: every minibatch's gradients,
    its KL estimate (the learning rate adapts to the mean KL, the same on every learner) and the
    normalisers' statistics, so all copies stay identical.
    """
    with torch.no_grad():
        values = policy.value(rollout.critic_obs)
        values_next = torch.cat([values[1:], policy.value(rollout.last_critic_obs)[None]])
        final_values = policy.value(rollout.final_critic_obs)
        after = next_values(values_next, final_values, rollout.terminated, rollout.truncated)
        advantages, returns = gae(rollout.rewards, values, after, rollout.terminated | rollout.truncated,
                                  config.gamma, config.lam)
    flat = {"obs": rollout.obs, "critic_obs": rollout.critic_obs, "actions": rollout.actions,
            "log_probs": rollout.log_probs, "advantages": advantages, "returns": returns, "values": values}
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in flat.items()}
    size = flat["obs"].shape[0]
    stats: dict[str, list[float]] = {}
    for _ in range(config.epochs):
        order = torch.randperm(size, generator=generator)
        for chunk in order.chunk(config.minibatches):
            batch = {k: v[chunk] for k, v in flat.items()}
            loss, step_stats = ppo_loss(policy, batch, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if average_across_learners:
                average_across_learners([p.grad for p in policy.parameters() if p.grad is not None])
            nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            kl = step_stats["approx_kl"]
            if average_across_learners:  # one learning rate for all learners: adapted to their mean KL
                kl_tensor = torch.tensor([kl], device=loss.device)
                average_across_learners([kl_tensor])
                kl = float(kl_tensor.item())
            for group in optimizer.param_groups:
                group["lr"] = adapt_lr(group["lr"], kl, config)
            for key, value in step_stats.items():
                stats.setdefault(key, []).append(value)
    # The normalisers move after the update: the update then sees the policy that collected the
    # rollout (moving them first shifts every action's log-probability and fakes a large KL).
    policy.obs_norm.update(rollout.obs)
    policy.critic_norm.update(rollout.critic_obs)
    if average_across_learners:
        average_across_learners([policy.obs_norm.mean, policy.obs_norm.var, policy.critic_norm.mean, policy.critic_norm.var])
    summary = {key: sum(values) / len(values) for key, values in stats.items()}
    summary.update({"lr": optimizer.param_groups[0]["lr"], "value_mean": float(values.mean()),
                    "advantage_std": float(advantages.std()), "action_std": float(policy.log_std.exp().mean())})
    return summary
