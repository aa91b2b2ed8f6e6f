"""Supervised fine-tuning pieces in plain torch: tokenised examples, a deterministic batch
order, the masked loss and one optimiser step (generation lives in `workloads.lm`).

The batch for global step `s` on rank `r` is a pure function of (seed, s, r): resuming at
step `s` therefore continues at exactly the same data position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workloads.lm import encode_text, forward_logits, pad

IGNORE_INDEX = -100


@dataclass
class TokenizedExamples:
    input_ids: torch.Tensor  # [N, L], right-padded
    attention_mask: torch.Tensor  # [N, L]
    labels: torch.Tensor  # [N, L], IGNORE_INDEX on prompt and padding

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "TokenizedExamples":
        return TokenizedExamples(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def tokenize_examples(tokenizer, prompts: Sequence[str], targets: Sequence[str], max_length: int,
                      prompt_tokens: int = 0) -> TokenizedExamples:
    """[bos] + prompt + target + eos (`encode_text`: bos only where the tokenizer has one), loss
    on the target and eos only, right-padded; cut at `max_length` tokens (0: the longest example).
    `prompt_tokens` > 0 first keeps only each prompt's last tokens (a long prefix loses its start,
    not the text next to the target). Prompts are already formatted (`workloads.lm.format_prompt`)."""
    encoded = [(encode_text(tokenizer, prompt, prompt_tokens),
                tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id])
               for prompt, target in zip(prompts, targets)]
    max_length = max_length or max((len(p) + len(t) for p, t in encoded), default=1)
    sequences = [(prompt_ids + target_ids)[:max_length] for prompt_ids, target_ids in encoded]
    label_rows = [([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length] for prompt_ids, target_ids in encoded]
    ids, mask = pad(sequences, tokenizer.pad_token_id, side="right", width=max_length)
    labels, _ = pad(label_rows, IGNORE_INDEX, side="right", width=max_length)
    return TokenizedExamples(ids, mask, labels)


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


def train_step(engine, batch: dict[str, torch.Tensor]) -> float:
    """One optimiser step on `batch` (moved to the model's device) through `engine`
    (`workloads.strategies`: backward, clipping, optimizer and schedule)."""
    engine.module.train()
    logits = forward_logits(engine.module, batch["input_ids"], batch["attention_mask"])
    loss = masked_token_cross_entropy(logits, batch["labels"].to(logits.device))
    engine.step(loss)
    return float(loss.detach())
