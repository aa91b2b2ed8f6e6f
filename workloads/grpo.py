"""GRPO for causal LMs in plain torch: sample a group of G completions per prompt, score each
group with a reward function, normalise within the group, and take clipped policy steps.

Shared by LongTraceRL (rubric or outcome reward) and DistIL's `rlvr` baseline (0/1 verifier
reward). Why not TRL's GRPOTrainer: the rubric reward normalises by the maximum over the
*whole* group, and TRL computes rewards per process on that process's slice of the
generations before gathering, so one group can be split across data-parallel ranks. Here a
group never leaves the rank that sampled it. The HF Trainer would also compete with Ray
Train for checkpoints and the process group (see `pipelines/sft.py`). Sampling and log-probs
come from the LM toolkit (`workloads.lm`).

With several data-parallel ranks, a step is skipped only when no rank has a group with reward
spread; a rank without one still steps, on a zero-advantage row (zero loss, whole graph), so
the gradient all-reduce always meets every rank.

    loss = -(1/|tokens|) sum_tokens min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
           + beta KL(pi || pi_ref)      (k3 estimator per sampled token; beta = kl_coef, 0 by default
                                         as in DAPO and the papers; > 0 needs a frozen reference model)

with rho = pi(token) / pi_old(token), token-level averaging (DAPO) and asymmetric clipping
0.2 / 0.28 by default.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import torch

from workloads.config import require
from workloads.distributed import any_rank
from workloads.lm import Rollouts, completion_logprobs


@dataclasses.dataclass
class GRPOConfig:
    """GRPO: groups of sampled completions, group-normalised rewards, clipped policy steps."""

    group_size: int = 8  # G: completions per prompt
    prompts_per_step: int = 4  # prompts per worker per step
    steps: int = 30  # GRPO steps
    lr: float = 2e-4  # AdamW learning rate
    clip_low: float = 0.2  # lower ratio clip (1 - clip_low)
    clip_high: float = 0.28  # upper ratio clip (1 + clip_high)
    kl_coef: float = 0.0  # k3 KL to a frozen reference (0: no reference model)
    updates_per_batch: int = 2  # policy steps on each sampled batch (the ratio moves off 1 after the first)
    temperature: float = 1.0  # sampling temperature
    max_new_tokens: int = 40  # longest completion
    max_grad_norm: float = 1.0  # gradient clipping norm

    section: ClassVar[str] = "grpo"

    def validate(self) -> None:
        require(self.group_size >= 2, "group_size", "must be >= 2 (advantages are relative to the group)")
        require(self.prompts_per_step >= 1, "prompts_per_step", "must be >= 1")
        require(self.steps >= 0, "steps", "must be >= 0")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 <= self.clip_low < 1 and self.clip_high >= 0, "clip_low", "need 0 <= clip_low < 1 and clip_high >= 0")
        require(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        require(self.updates_per_batch >= 1, "updates_per_batch", "must be >= 1")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps), population std; rewards [P*G] grouped by prompt."""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, unbiased=False, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def grpo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                     mask: torch.Tensor | None = None, clip_low: float = 0.2, clip_high: float = 0.28) -> torch.Tensor:
    """Clipped surrogate with asymmetric clipping, averaged over the tokens in `mask` ([N, T])."""
    mask = torch.ones_like(logprobs) if mask is None else mask.to(logprobs.dtype)
    ratio = (logprobs - old_logprobs.detach()).exp()
    unclipped = ratio * advantages[:, None]
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages[:, None]
    return -(torch.minimum(unclipped, clipped) * mask).sum() / mask.sum().clamp(min=1)


def k3_per_token(logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(pi || pi_ref) at tokens sampled from pi:
    exp(ref - pi) - (ref - pi) - 1 (unbiased, never negative)."""
    delta = reference_logprobs.detach() - logprobs
    return delta.exp() - delta - 1


def k3_kl(logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 averaged over the tokens in `mask`."""
    mask = mask.to(logprobs.dtype)
    return (k3_per_token(logprobs, reference_logprobs) * mask).sum() / mask.sum().clamp(min=1)


def frozen_reference(model):
    """A frozen copy of the policy as it is now: the KL anchor when `kl_coef` > 0."""
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


RewardFn = Callable[[Rollouts], torch.Tensor]  # [P*G] rewards, grouped by prompt


def rollout_logprobs(model, rollouts: Rollouts) -> torch.Tensor:
    return completion_logprobs(model, rollouts.input_ids, rollouts.attention_mask, rollouts.completion_mask)


def grpo_step(engine, rollouts: Rollouts, rewards: torch.Tensor, cfg: GRPOConfig, reference_model=None) -> dict[str, float]:
    """`updates_per_batch` clipped policy steps on one sampled batch; returns its statistics.

    `engine` (`workloads.strategies`) takes the steps (its `max_grad_norm` clips them); old
    log-probs come from its bare model. Rows whose group had no reward spread (advantage 0)
    carry no gradient and are dropped before the forward passes; the skip decision is agreed
    across ranks (module docstring). `reference_model` (`frozen_reference`) is required when
    `cfg.kl_coef` > 0."""
    if cfg.kl_coef > 0 and reference_model is None:
        raise ValueError("grpo.kl_coef > 0 needs a reference model (workloads.grpo.frozen_reference)")
    advantages = group_advantages(rewards.float(), cfg.group_size)
    informative = advantages.abs() > 0
    stats = {"informative_fraction": float(informative.float().mean())}
    if not any_rank(bool(informative.any())):  # no rank has anything to learn: all skip together
        return {**stats, "loss": 0.0, "clip_fraction": 0.0, "kl": 0.0}
    if not informative.any():  # others learn: step with one zero-advantage row (zero loss, whole graph)
        informative = torch.zeros_like(informative)
        informative[0] = True
    kept = rollouts.select(informative)
    with torch.no_grad():
        engine.model.eval()
        old_logprobs = rollout_logprobs(engine.model, kept)
        reference = rollout_logprobs(reference_model, kept) if cfg.kl_coef > 0 else None
    advantages = advantages[informative].to(old_logprobs.device)
    mask = kept.completion_mask.to(old_logprobs.device)
    engine.module.train()
    for _ in range(cfg.updates_per_batch):
        logprobs = rollout_logprobs(engine.module, kept)
        loss = grpo_policy_loss(logprobs, old_logprobs, advantages, mask, cfg.clip_low, cfg.clip_high)
        kl = k3_kl(logprobs, reference, mask) if reference is not None else torch.zeros((), device=loss.device)
        engine.step(loss + cfg.kl_coef * kl)
    with torch.no_grad():
        ratio = (logprobs.detach() - old_logprobs).exp()
        outside = ((ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high)).float() * mask
        stats["clip_fraction"] = float(outside.sum() / mask.sum().clamp(min=1))
    return {**stats, "loss": float(loss.detach()), "kl": float(kl.detach())}
