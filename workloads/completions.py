"""OpenAI-compatible text completions for a causal LM, with vLLM's `prompt_logprobs`.

Plain torch, so the Serve `generate` app stays thin and the scoring is testable without Ray.
A prompt is text (encoded as bos + text, like the rest of the project) or token ids (used as
given). `n` samples per prompt come back as choices `prompt * n + j`, as OpenAI and vLLM
number them; a choice that stopped on a stop string names it in `stop_reason` (vLLM's field;
None for eos). `prompt_logprobs=k` returns, for every prompt position, the top-k next-token
log-probs plus the token actually there, in vLLM's shape: a list with `None` first, then
`{token_id: {"logprob", "rank", "decoded_token"}}` per position.
"""

from __future__ import annotations

import time
import uuid
from typing import Sequence

import torch


class PromptError(ValueError):
    """A prompt the model cannot take (ids outside the vocabulary, too long, empty)."""


def encode_prompts(tokenizer, prompts, vocab_size: int, max_positions: int) -> list[list[int]]:
    """Normalise the request's `prompt` (str | list[int] | list[str] | list[list[int]]) to id lists."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    encoded = []
    for index, prompt in enumerate(prompts):
        ids = [tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
        where = f"prompt[{index}]" if len(prompts) > 1 else "prompt"
        if not ids or (isinstance(prompt, str) and not prompt):
            raise PromptError(f"{where}: empty")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise PromptError(f"{where}: token id {bad[0]} outside the vocabulary (0..{vocab_size - 1})")
        if len(ids) > max_positions:
            raise PromptError(f"{where}: {len(ids)} tokens, the model takes at most {max_positions}")
        encoded.append(ids)
    return encoded


def right_padded(sequences: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of `sequences` padded on the right to the longest."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return ids, mask


@torch.no_grad()
def prompt_logprobs(model, tokenizer, sequences: list[list[int]], top_k: int) -> list[list[dict | None]]:
    """Per sequence, per position: the top-k next-token log-probs and the actual token's (one forward pass)."""
    ids, mask = right_padded(sequences, tokenizer.pad_token_id)
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for row, sequence in enumerate(sequences):
        entries: list[dict | None] = [None]
        if len(sequence) > 1:
            scores = logprobs[row, : len(sequence) - 1]
            top_values, top_ids = scores.topk(min(top_k, scores.shape[-1]), dim=-1) if top_k else (None, None)
            actual = torch.tensor(sequence[1:])
            actual_values = scores.gather(1, actual[:, None]).squeeze(1)
            actual_ranks = (scores > actual_values[:, None]).sum(dim=1) + 1
            for position in range(len(sequence) - 1):
                entry = {}
                if top_k:
                    for rank, (token, value) in enumerate(zip(top_ids[position].tolist(), top_values[position].tolist()), 1):
                        entry[str(token)] = {"logprob": value, "rank": rank, "decoded_token": tokenizer.decode([token])}
                token = int(actual[position])
                entry.setdefault(str(token), {"logprob": float(actual_values[position]), "rank": int(actual_ranks[position]),
                                              "decoded_token": tokenizer.decode([token])})
                entries.append(entry)
        out.append(entries)
    return out


@torch.no_grad()
def continue_sequences(model, tokenizer, sequences: list[list[int]], max_tokens: int, temperature: float,
                       stop: list[str], seed: int | None) -> list[tuple[str, str, str | None, int]]:
    """(text, finish_reason, stop_reason, completion tokens) per sequence: greedy at temperature 0,
    sampled otherwise. The text ends before the first stop string, which `stop_reason` names."""
    if max_tokens == 0:
        return [("", "length", None, 0) for _ in sequences]
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in sequences])  # left padding for generation
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    if seed is not None:
        torch.manual_seed(seed)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, pad_token_id=pad,
                               eos_token_id=tokenizer.eos_token_id, **sampling)[:, width:]
    results = []
    for row in generated.tolist():
        ended = tokenizer.eos_token_id in row
        tokens = row[: row.index(tokenizer.eos_token_id)] if ended else row
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut, stop_reason = min(((text.index(s), s) for s in stop if s in text), default=(None, None))
        if cut is not None:
            text, ended = text[:cut], True
        results.append((text, "stop" if ended else "length", stop_reason, len(tokens) + int(ended and cut is None)))
    return results


def completion_response(model, tokenizer, model_name: str, sequences: list[list[int]], max_tokens: int,
                        temperature: float, stop: list[str], seed: int | None, top_k_prompt: int | None,
                        n: int = 1) -> dict:
    """The whole `/v1/completions` answer for already-encoded prompts, `n` choices per prompt."""
    continuations = continue_sequences(model, tokenizer, [s for s in sequences for _ in range(n)], max_tokens,
                                       temperature, stop, seed)
    scored = prompt_logprobs(model, tokenizer, sequences, top_k_prompt) if top_k_prompt is not None else None
    choices = []
    for index, (text, finish, stop_reason, _) in enumerate(continuations):
        choice = {"index": index, "text": text, "finish_reason": finish, "stop_reason": stop_reason, "logprobs": None}
        if scored is not None:
            choice["prompt_logprobs"] = scored[index // n]
        choices.append(choice)
    prompt_tokens = sum(len(s) for s in sequences)
    completion_tokens = sum(count for *_, count in continuations)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def continuation_logprobs(model, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                          pad: int, temperature: float = 1.0) -> torch.Tensor:
    """[M]: sum of log p(continuation | context) per pair, in one right-padded forward pass.
    Differentiable (the student's step-level loss); wrap in `torch.no_grad()` to score."""
    sequences = [list(c) + list(x) for c, x in zip(contexts, continuations)]
    ids, mask = right_padded(sequences, pad)
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float() / temperature, dim=-1)
    rows, columns, targets = [], [], []
    for index, (context, continuation) in enumerate(zip(contexts, continuations)):
        for offset, token in enumerate(continuation):
            rows.append(index)
            columns.append(len(context) + offset - 1)  # the position that predicts this token
            targets.append(token)
    if not rows:
        return logprobs.sum() * 0.0 + torch.zeros(len(sequences))
    picked = logprobs[torch.tensor(rows), torch.tensor(columns), torch.tensor(targets)]
    return torch.zeros(len(sequences)).index_add(0, torch.tensor(rows), picked)
