"""Supervised fine-tuning pieces in plain torch: tokenised examples, a deterministic batch
order, the masked loss, one optimiser step and greedy evaluation.

The batch for global step `s` on rank `r` is a pure function of (seed, s, r): resuming at
step `s` therefore continues at exactly the same data position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class TokenizedExamples:
    input_ids: torch.Tensor  # [N, L], right-padded
    attention_mask: torch.Tensor  # [N, L]
    labels: torch.Tensor  # [N, L], IGNORE_INDEX on prompt and padding

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def tokenize_examples(tokenizer, prompts: Sequence[str], targets: Sequence[str], max_length: int) -> TokenizedExamples:
    """bos + prompt + target + eos, loss on the target and eos only; cut at `max_length` tokens
    (0: as long as the longest example)."""
    encoded = [([tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False),
                tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id])
               for prompt, target in zip(prompts, targets)]
    max_length = max_length or max((len(p) + len(t) for p, t in encoded), default=1)
    rows, masks, labels = [], [], []
    for prompt_ids, target_ids in encoded:
        ids = (prompt_ids + target_ids)[:max_length]
        label = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
        pad = max_length - len(ids)
        rows.append(ids + [tokenizer.pad_token_id] * pad)
        masks.append([1] * len(ids) + [0] * pad)
        labels.append(label + [IGNORE_INDEX] * pad)
    return TokenizedExamples(torch.tensor(rows), torch.tensor(masks), torch.tensor(labels))


def batch_indices(step: int, batch_size: int, world_size: int, rank: int, num_examples: int, seed: int) -> torch.Tensor:
    """Example indices of global step `step` on `rank`: a fresh seeded permutation per epoch."""
    per_step = batch_size * world_size
    first = step * per_step + rank * batch_size
    positions = torch.arange(first, first + batch_size)
    epochs, offsets = positions // num_examples, positions % num_examples
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        chosen = epochs == epoch
        out[chosen] = perm[offsets[chosen]]
    return out


def batch_at(data: TokenizedExamples, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    # Trim columns that are padding in every row of this batch.
    width = int(data.attention_mask[indices].sum(dim=1).max())
    return {
        "input_ids": data.input_ids[indices, :width],
        "attention_mask": data.attention_mask[indices, :width],
        "labels": data.labels[indices, :width],
    }


def masked_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not IGNORE_INDEX."""
    shifted_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits.float(), shifted_labels, ignore_index=IGNORE_INDEX)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def train_step(model, optimizer, scheduler, batch: dict[str, torch.Tensor], max_grad_norm: float = 1.0) -> float:
    model.train()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = masked_token_cross_entropy(logits, batch["labels"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


@torch.no_grad()
def greedy_complete(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 100) -> list[str]:
    """Greedy continuations of `prompts` (bos-prefixed, left-padded), decoded without specials."""
    model.eval()
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [tokenizer.bos_token + p for p in prompts[start : start + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        generated = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs
