"""Log-probabilities of tokens under a causal LM: of a continuation given its context, of every
completion token of a rollout batch, and the top-k next tokens at every position (computed on
the model's device; only the top-k leave it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from workloads.lm.tokens import device_of, forward_logits, pad


def next_token_logprobs(model, sequences: Sequence[Sequence[int]], pad_id: int, temperature: float = 1.0) -> torch.Tensor:
    """[B, L, V]: log p(next token | sequence[:j + 1]) at every position of right-padded `sequences`."""
    ids, mask = pad(sequences, pad_id, side="right")
    return F.log_softmax(forward_logits(model, ids, mask).float() / temperature, dim=-1)


def top_k_logprobs(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, log-probs) of the k most likely tokens, largest first, along the last axis; the
    tail bucket's mass is 1 - sum(exp(top)), as `workloads.distill.TopKDistribution` reads it."""
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return ids, values


def continuation_logprobs(model, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                          pad_id: int, temperature: float = 1.0) -> torch.Tensor:
    """[M]: sum of log p(continuation | context) per pair, in one padded forward pass.
    Differentiable (the student's step-level loss); wrap in `torch.no_grad()` to score."""
    sequences = [list(c) + list(x) for c, x in zip(contexts, continuations)]
    logprobs = next_token_logprobs(model, sequences, pad_id, temperature)
    device = logprobs.device
    rows, columns, targets = [], [], []
    for index, (context, continuation) in enumerate(zip(contexts, continuations)):
        for offset, token in enumerate(continuation):
            rows.append(index)
            columns.append(len(context) + offset - 1)  # the position that predicts this token
            targets.append(token)
    totals = torch.zeros(len(sequences), device=device)
    if not rows:
        return totals + logprobs.sum() * 0.0  # keeps the graph: every rank's backward reaches every parameter
    rows_t = torch.tensor(rows, device=device)
    picked = logprobs[rows_t, torch.tensor(columns, device=device), torch.tensor(targets, device=device)]
    return totals.index_add(0, rows_t, picked)


def completion_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """[N, T, V]: next-token logits at every completion position of a (left-padded prompt, then
    completion) batch whose completions start at column `prompt_length`."""
    logits = forward_logits(model, input_ids, attention_mask)
    return logits[:, prompt_length - 1 : -1, :].float()


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """[N, T]: log pi(token) of every completion token (0 where `completion_mask` is 0)."""
    prompt_length = input_ids.shape[1] - completion_mask.shape[1]
    logprobs = F.log_softmax(completion_logits(model, input_ids, attention_mask, prompt_length) / temperature, dim=-1)
    tokens = input_ids[:, prompt_length:].to(logprobs.device)
    picked = torch.gather(logprobs, 2, tokens[..., None]).squeeze(-1)
    return picked * completion_mask.to(picked.device)


def zero_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A zero loss with the whole model in its graph: what a rank with nothing to learn from
    backpropagates, so that its gradient all-reduce meets the other ranks' (DDP, FSDP and ZeRO
    wait for every rank's backward)."""
    return forward_logits(model, input_ids[:1], attention_mask[:1]).sum() * 0.0


__all__ = ["completion_logits", "completion_logprobs", "continuation_logprobs", "device_of", "next_token_logprobs",
           "top_k_logprobs", "zero_loss"]
