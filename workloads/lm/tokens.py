"""Prompts, padding and devices: the conventions every LM code path in the project shares.

- A prompt is formatted once (`format_prompt`): through the tokenizer's chat template when it
  has one, as plain text otherwise; `encode_text` then adds BOS only when the tokenizer has one
  (Qwen2-family tokenizers have none) and the text does not already begin with it.
- A batch of token sequences is padded by `pad` (left by default: generation appends on the
  right) into (ids, attention mask); position ids always come from the mask
  (`position_ids`), so left- and right-padded batches score alike.
- Tensors go to the model's device (`device_of`), so the same code runs on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def format_prompt(tokenizer, user: str | Sequence[dict], plain_suffix: str = "") -> str:
    """The text a model is prompted with: `user` (a message or a list of chat messages) through
    the tokenizer's chat template with the assistant's turn opened, or, without a template, the
    messages' contents joined by blank lines, then `plain_suffix`."""
    messages = [{"role": "user", "content": user}] if isinstance(user, str) else list(user)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + plain_suffix


def bos_ids(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def encode_text(tokenizer, text: str, max_tokens: int = 0) -> list[int]:
    """BOS (when the tokenizer has one and `text` does not start with it) + the text's tokens;
    with `max_tokens`, only the last tokens that fit after the BOS (a long prompt keeps its end,
    the part next to what the model writes)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = bos_ids(tokenizer)
    if bos and ids[:1] == bos:
        ids = ids[1:]
    if max_tokens and len(bos) + len(ids) > max_tokens:
        ids = ids[len(ids) - max(0, max_tokens - len(bos)):]
    return bos + ids


def pad(sequences: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"] = "left",
        width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L], attention mask [B, L]) of `sequences` padded to `width` (default: the longest)."""
    width = width or max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if not sequence:
            continue
        columns = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        ids[row, columns] = torch.as_tensor(list(sequence), dtype=torch.long)
        mask[row, columns] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the real tokens only (0 at each row's first token)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L, V] logits of a padded batch on the model's device, positions from the mask."""
    device = device_of(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)).logits
