"""GRPO for causal LMs in plain torch: sample a group of G completions per prompt, score each
group with a reward function, normalise within the group, and take clipped policy steps.

Shared by LongTraceRL (rubric or outcome reward) and DistIL's `rlvr` baseline (0/1 verifier
reward). Why not TRL's GRPOTrainer: the rubric reward normalises by the maximum over the
*whole* group, and TRL computes rewards per process on that process's slice of the
generations before gathering, so one group can be split across data-parallel ranks. Here a
group never leaves the rank that sampled it. The HF Trainer would also compete with Ray
Train for checkpoints and the process group (see `pipelines/sft.py`).

    loss = -(1/|tokens|) sum_tokens min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
           + beta KL(pi || pi_ref)      (k3 estimator; beta = 0 by default: no reference model)

with rho = pi(token) / pi_old(token), token-level averaging (DAPO) and asymmetric clipping
0.2 / 0.28 by default.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F

from workloads.config import require


@dataclasses.dataclass
class GRPOConfig:
    group_size: int = 8
    prompts_per_step: int = 4
    steps: int = 30
    lr: float = 2e-4
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    updates_per_batch: int = 2  # policy steps on each sampled batch (the ratio moves off 1 after the first)
    temperature: float = 1.0
    max_new_tokens: int = 40
    max_grad_norm: float = 1.0

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


@dataclasses.dataclass
class Rollouts:
    """G completions for each of P prompts, rows grouped by prompt (row = prompt * G + j)."""

    input_ids: torch.Tensor  # [P*G, prompt + T]: left-padded prompt, then the completion
    attention_mask: torch.Tensor  # [P*G, prompt + T]
    completion_mask: torch.Tensor  # [P*G, T]: completion tokens up to and including eos
    texts: list[str]
    truncated: list[bool]  # no eos within max_new_tokens

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1] - self.completion_mask.shape[1]


@torch.no_grad()
def sample_groups(model, tokenizer, prompts: Sequence[str], group_size: int, max_new_tokens: int,
                  temperature: float = 1.0, generator_seed: int | None = None) -> Rollouts:
    """Sample `group_size` completions per prompt (bos + prompt, pure sampling: no top-k/top-p)."""
    model.eval()
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    enc = tokenizer([tokenizer.bos_token + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    generated = model.generate(
        **enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=group_size,
        max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    prompt_length = enc["input_ids"].shape[1]
    completion = generated[:, prompt_length:]
    is_eos = completion == tokenizer.eos_token_id
    # Tokens up to and including the first eos count; everything after it is padding.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    completion_mask = (~after_eos).long()
    truncated = (~is_eos.any(dim=1)).tolist()
    attention_mask = torch.cat([enc["attention_mask"].repeat_interleave(group_size, dim=0), completion_mask], dim=1)
    texts = tokenizer.batch_decode(completion * completion_mask + tokenizer.pad_token_id * (1 - completion_mask),
                                   skip_special_tokens=True)
    return Rollouts(generated, attention_mask, completion_mask, texts, truncated)


def completion_logprobs(model, rollouts: Rollouts) -> torch.Tensor:
    """log pi(token) of every completion token, [N, T] (0 where masked)."""
    position_ids = (rollouts.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding
    logits = model(input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask, position_ids=position_ids).logits
    start = rollouts.prompt_length
    predicted = logits[:, start - 1 : -1, :].float()
    tokens = rollouts.input_ids[:, start:]
    logprobs = torch.gather(F.log_softmax(predicted, dim=-1), 2, tokens[..., None]).squeeze(-1)
    return logprobs * rollouts.completion_mask


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


def k3_kl(logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref): exp(ref - pi) - (ref - pi) - 1, averaged over `mask`."""
    delta = reference_logprobs.detach() - logprobs
    mask = mask.to(logprobs.dtype)
    return ((delta.exp() - delta - 1) * mask).sum() / mask.sum().clamp(min=1)


RewardFn = Callable[[Rollouts], torch.Tensor]  # [P*G] rewards, grouped by prompt


def grpo_step(model, optimizer, rollouts: Rollouts, rewards: torch.Tensor, cfg: GRPOConfig,
              reference_model=None, train_model=None) -> dict[str, float]:
    """`updates_per_batch` clipped policy steps on one sampled batch; returns its statistics.

    `train_model` is the (possibly DDP-wrapped) module that takes the gradient steps; `model`
    the bare one. Rows whose group had no reward spread (advantage 0) carry no gradient and
    are dropped before the forward passes."""
    train_model = train_model or model
    advantages = group_advantages(rewards, cfg.group_size)
    informative = advantages.abs() > 0
    stats = {"informative_fraction": float(informative.float().mean())}
    if not informative.any():
        return {**stats, "loss": 0.0, "clip_fraction": 0.0, "kl": 0.0}
    kept = Rollouts(rollouts.input_ids[informative], rollouts.attention_mask[informative],
                    rollouts.completion_mask[informative], [], [])
    advantages = advantages[informative]
    with torch.no_grad():
        model.eval()
        old_logprobs = completion_logprobs(model, kept)
        reference = completion_logprobs(reference_model, kept) if cfg.kl_coef > 0 and reference_model is not None else None
    train_model.train()
    for _ in range(cfg.updates_per_batch):
        logprobs = completion_logprobs(train_model, kept)
        loss = grpo_policy_loss(logprobs, old_logprobs, advantages, kept.completion_mask, cfg.clip_low, cfg.clip_high)
        kl = k3_kl(logprobs, reference, kept.completion_mask) if reference is not None else torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        (loss + cfg.kl_coef * kl).backward()
        torch.nn.utils.clip_grad_norm_(train_model.parameters(), cfg.max_grad_norm)
        optimizer.step()
    with torch.no_grad():
        ratio = (logprobs.detach() - old_logprobs).exp()
        outside = ((ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high)).float() * kept.completion_mask
        stats["clip_fraction"] = float(outside.sum() / kept.completion_mask.sum().clamp(min=1))
    return {**stats, "loss": float(loss.detach()), "kl": float(kl.detach())}
