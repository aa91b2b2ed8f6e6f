"""OpenAI-compatible text completions for a causal LM, with vLLM's `prompt_logprobs`.

Plain torch, so the Serve `generate` app stays thin and the scoring is testable without Ray.
A prompt is text (encoded by `workloads.lm.encode_text`: BOS only where the tokenizer has one,
no chat template, as OpenAI's completions route takes raw text) or token ids (used as given). `n` samples per prompt come back as choices `prompt * n + j`, as OpenAI and vLLM
number them; a choice that stopped on a stop string names it in `stop_reason` (vLLM's field;
None for eos). `prompt_logprobs=k` returns, for every prompt position, the top-k next-token
log-probs plus the token actually there, in vLLM's shape: a list with `None` first, then
`{token_id: {"logprob", "rank", "decoded_token"}}` per position.
"""

from __future__ import annotations

import time
import uuid

import torch

from workloads.lm import completion_mask, encode_text, generate_ids, next_token_logprobs, top_k_logprobs


class PromptError(ValueError):
    """A prompt the model cannot take (ids outside the vocabulary, too long, empty)."""


def encode_prompts(tokenizer, prompts, vocab_size: int, max_positions: int) -> list[list[int]]:
    """Normalise the request's `prompt` (str | list[int] | list[str] | list[list[int]]) to id lists."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    encoded = []
    for index, prompt in enumerate(prompts):
        ids = encode_text(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
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


@torch.no_grad()
def prompt_logprobs(model, tokenizer, sequences: list[list[int]], top_k: int) -> list[list[dict | None]]:
    """Per sequence, per position: the top-k next-token log-probs and the actual token's (one forward pass)."""
    logprobs = next_token_logprobs(model, sequences, tokenizer.pad_token_id)
    out = []
    for row, sequence in enumerate(sequences):
        entries: list[dict | None] = [None]
        if len(sequence) > 1:
            scores = logprobs[row, : len(sequence) - 1]
            top_ids, top_values = (t.cpu() for t in top_k_logprobs(scores, top_k)) if top_k else (None, None)
            actual = torch.tensor(sequence[1:], device=scores.device)
            actual_values = scores.gather(1, actual[:, None]).squeeze(1)
            actual_ranks = ((scores > actual_values[:, None]).sum(dim=1) + 1).cpu()
            actual, actual_values = actual.cpu(), actual_values.cpu()
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
    _, _, generated = generate_ids(model, tokenizer, sequences, max_tokens, temperature, seed=seed)
    kept = completion_mask(generated, tokenizer.eos_token_id)
    results = []
    for row, length in zip(generated.tolist(), kept.sum(dim=1).tolist()):
        ended = tokenizer.eos_token_id in row[:length]
        tokens = row[: length - 1] if ended else row[:length]
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
