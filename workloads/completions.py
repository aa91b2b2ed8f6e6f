"""OpenAI-compatible completions and chat completions for a causal LM, with vLLM's extras.

Plain torch, so the Serve `generate` app stays thin and everything is testable without Ray.
- A completions prompt is raw text (encoded by `workloads.lm.encode_text`: BOS only where the
  tokenizer has one, no chat template) or token ids (used as given); a chat request's messages
  go through the tokenizer's chat template (a model without one is refused, as vLLM does).
- `n` samples per prompt come back as choices `prompt * n + j`, as OpenAI and vLLM number
  them; a choice that stopped on a stop string names it in `stop_reason` (vLLM's field; None
  for eos).
- `logprobs=k` (completions) / `logprobs, top_logprobs=k` (chat): the log-prob of every
  returned token and its k most likely alternatives, in OpenAI's shapes, scored by the model at
  temperature 1 (as vLLM reports them); `echo` returns the prompt before the completion (with
  its tokens' log-probs, the first None).
- `prompt_logprobs=k` (vLLM's): for every prompt position, the top-k next-token log-probs
  plus the token actually there: a list with `None` first, then
  `{token_id: {"logprob", "rank", "decoded_token"}}` per position.
- `stream`: chunks as OpenAI sends them over server-sent events (`stream_chunks`), one per
  generated piece of text, generated token by token with the KV cache.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator, Sequence

import torch

from workloads.lm import (
    completion_mask,
    encode_text,
    format_prompt,
    generate_ids,
    next_token_logprobs,
    stream_tokens,
    top_k_logprobs,
)


class PromptError(ValueError):
    """A prompt the model cannot take (ids outside the vocabulary, too long, empty, no chat template)."""


def check_ids(ids: list[int], where: str, vocab_size: int, max_positions: int) -> list[int]:
    if not ids:
        raise PromptError(f"{where}: empty")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise PromptError(f"{where}: token id {bad[0]} outside the vocabulary (0..{vocab_size - 1})")
    if len(ids) > max_positions:
        raise PromptError(f"{where}: {len(ids)} tokens, the model takes at most {max_positions}")
    return ids


def encode_prompts(tokenizer, prompts, vocab_size: int, max_positions: int) -> list[list[int]]:
    """Normalise the request's `prompt` (str | list[int] | list[str] | list[list[int]]) to id lists."""
    if isinstance(prompts, list) and not prompts:
        raise PromptError("prompt: empty list")
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    encoded = []
    for index, prompt in enumerate(prompts):
        where = f"prompt[{index}]" if len(prompts) > 1 else "prompt"
        if isinstance(prompt, str) and not prompt:
            raise PromptError(f"{where}: empty")
        ids = encode_text(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
        encoded.append(check_ids(ids, where, vocab_size, max_positions))
    return encoded


def encode_chat(tokenizer, messages: Sequence[dict], vocab_size: int, max_positions: int) -> list[int]:
    """The chat messages through the tokenizer's chat template, the assistant's turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError("messages: this model's tokenizer has no chat template; use /v1/completions")
    return check_ids(encode_text(tokenizer, format_prompt(tokenizer, messages)), "messages", vocab_size, max_positions)


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


@dataclasses.dataclass
class TokenLogprob:
    token_id: int
    logprob: float | None  # None: the first prompt token (nothing predicts it)
    top: list[tuple[int, float]]  # the most likely tokens at that position, best first


@torch.no_grad()
def token_logprobs(model, tokenizer, sequence: list[int], start: int, top_n: int) -> list[TokenLogprob]:
    """The log-prob of every token of `sequence` from position `start` on (and its `top_n` best
    alternatives), scored in one forward pass at temperature 1."""
    entries = []
    if start == 0:
        entries.append(TokenLogprob(sequence[0], None, []))
        start = 1
    if start >= len(sequence):
        return entries
    logprobs = next_token_logprobs(model, [sequence], tokenizer.pad_token_id)[0, start - 1 : len(sequence) - 1]
    actual = torch.tensor(sequence[start:], device=logprobs.device)
    values = logprobs.gather(1, actual[:, None]).squeeze(1).tolist()
    top_ids, top_values = top_k_logprobs(logprobs, max(top_n, 1))
    for j, (token, value) in enumerate(zip(sequence[start:], values)):
        top = list(zip(top_ids[j].tolist(), top_values[j].tolist()))[:top_n]
        entries.append(TokenLogprob(token, value, top))
    return entries


@dataclasses.dataclass
class Continuation:
    text: str
    token_ids: list[int]  # the tokens behind `text` (a stop string's token included, eos excluded)
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    stop_reason: str | None  # the stop string it stopped on; None for eos or length
    generated: int  # tokens the model generated (eos included)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[int | None, str | None]:
    """(where the first stop string starts in `text`, which) or (None, None)."""
    return min(((text.index(s), s) for s in stop if s in text), default=(None, None))


def tokens_covering(tokenizer, token_ids: list[int], length: int) -> list[int]:
    """The shortest prefix of `token_ids` whose text reaches `length` characters."""
    for count in range(len(token_ids) + 1):
        if len(tokenizer.decode(token_ids[:count], skip_special_tokens=True)) >= length:
            return token_ids[:count]
    return token_ids


@torch.no_grad()
def continue_sequences(model, tokenizer, sequences: list[list[int]], max_tokens: int, temperature: float,
                       stop: list[str], seed: int | None) -> list[Continuation]:
    """One continuation per sequence: greedy at temperature 0, sampled otherwise. The text ends
    before the first stop string, which `stop_reason` names."""
    if max_tokens == 0:
        return [Continuation("", [], "length", None, 0) for _ in sequences]
    _, _, generated = generate_ids(model, tokenizer, sequences, max_tokens, temperature, seed=seed)
    kept = completion_mask(generated, tokenizer.eos_token_id)
    results = []
    for row, length in zip(generated.tolist(), kept.sum(dim=1).tolist()):
        ended = tokenizer.eos_token_id in row[:length]
        tokens = row[: length - 1] if ended else row[:length]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut, stop_reason = cut_at_stop(text, stop)
        if cut is not None:
            text = text[:cut]
            tokens = tokens_covering(tokenizer, tokens, cut)
        results.append(Continuation(text, tokens, "stop" if ended or cut is not None else "length", stop_reason,
                                    len(tokens) + int(ended and cut is None)))
    return results


def completion_logprobs_field(tokenizer, entries: list[TokenLogprob], text_start: int) -> dict:
    """OpenAI's legacy completions `logprobs` object for `entries`, text offsets from `text_start`."""
    field = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = text_start
    for entry in entries:
        piece = tokenizer.decode([entry.token_id])
        field["tokens"].append(piece)
        field["token_logprobs"].append(entry.logprob)
        field["top_logprobs"].append({tokenizer.decode([t]): v for t, v in entry.top} if entry.logprob is not None else None)
        field["text_offset"].append(offset)
        offset += len(piece)
    return field


def chat_logprobs_field(tokenizer, entries: list[TokenLogprob]) -> dict:
    """OpenAI's chat `logprobs` object: `content`, one item per returned token."""
    def item(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]} for e in entries]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(model, tokenizer, model_name: str, sequences: list[list[int]], max_tokens: int,
                        temperature: float, stop: list[str], seed: int | None, top_k_prompt: int | None,
                        n: int = 1, logprobs: int | None = None, echo: bool = False) -> dict:
    """The whole `/v1/completions` answer for already-encoded prompts, `n` choices per prompt."""
    continuations = continue_sequences(model, tokenizer, [s for s in sequences for _ in range(n)], max_tokens,
                                       temperature, stop, seed)
    scored = prompt_logprobs(model, tokenizer, sequences, top_k_prompt) if top_k_prompt is not None else None
    choices = []
    for index, continuation in enumerate(continuations):
        prompt = sequences[index // n]
        prompt_text = tokenizer.decode(prompt, skip_special_tokens=True) if echo else ""
        choice = {"index": index, "text": prompt_text + continuation.text, "finish_reason": continuation.finish_reason,
                  "stop_reason": continuation.stop_reason, "logprobs": None}
        if logprobs is not None:
            start = 0 if echo else len(prompt)
            entries = token_logprobs(model, tokenizer, prompt + continuation.token_ids, start, logprobs)
            choice["logprobs"] = completion_logprobs_field(tokenizer, entries, 0)
        if scored is not None:
            choice["prompt_logprobs"] = scored[index // n]
        choices.append(choice)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model_name, "choices": choices,
            "usage": usage(sum(len(s) for s in sequences), sum(c.generated for c in continuations))}


def chat_response(model, tokenizer, model_name: str, sequence: list[int], max_tokens: int, temperature: float,
                  stop: list[str], seed: int | None, n: int = 1, top_logprobs: int | None = None) -> dict:
    """The whole `/v1/chat/completions` answer for an already-templated conversation."""
    continuations = continue_sequences(model, tokenizer, [sequence] * n, max_tokens, temperature, stop, seed)
    choices = []
    for index, continuation in enumerate(continuations):
        choice = {"index": index, "message": {"role": "assistant", "content": continuation.text},
                  "finish_reason": continuation.finish_reason, "stop_reason": continuation.stop_reason, "logprobs": None}
        if top_logprobs is not None:
            entries = token_logprobs(model, tokenizer, sequence + continuation.token_ids, len(sequence), top_logprobs)
            choice["logprobs"] = chat_logprobs_field(tokenizer, entries)
        choices.append(choice)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name, "choices": choices, "usage": usage(len(sequence), sum(c.generated for c in continuations))}


# ---------------------------------------------------------------- streaming
def stream_text(model, tokenizer, sequence: list[int], max_tokens: int, temperature: float, stop: Sequence[str],
                seed: int | None) -> Iterator[tuple[str, str | None, str | None]]:
    """Yield (new text, finish_reason, stop_reason) as the generated text grows; the last item
    carries the finish reason. Text that could still become a stop string, or is an incomplete
    UTF-8 character, is held back until it is decided."""
    tokens: list[int] = []
    sent = 0
    hold = max((len(s) for s in stop), default=1) - 1
    for token in stream_tokens(model, sequence, max_tokens, temperature, seed):
        if token == tokenizer.eos_token_id:
            yield tokenizer.decode(tokens, skip_special_tokens=True)[sent:], "stop", None
            return
        tokens.append(token)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut, stop_reason = cut_at_stop(text, stop)
        if cut is not None:
            yield text[sent:cut], "stop", stop_reason
            return
        safe = len(text.rstrip("\ufffd")) - hold
        if safe > sent:
            yield text[sent:safe], None, None
            sent = safe
    yield tokenizer.decode(tokens, skip_special_tokens=True)[sent:], "length", None


def stream_chunks(model, tokenizer, model_name: str, sequences: list[list[int]], n: int, max_tokens: int,
                  temperature: float, stop: list[str], seed: int | None, chat: bool, echo: bool = False) -> Iterator[dict]:
    """OpenAI's streamed chunks (`text_completion` or `chat.completion.chunk`), choice after choice."""
    ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, text: str | None, finish: str | None, stop_reason: str | None = None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            body = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            body = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        if finish is not None:
            body["stop_reason"] = stop_reason
        return {"id": ident, "object": kind, "created": created, "model": model_name, "choices": [body]}

    for index in range(len(sequences) * n):
        sequence = sequences[index // n]
        if chat:
            yield chunk(index, None, None, role=True)
        elif echo:
            yield chunk(index, tokenizer.decode(sequence, skip_special_tokens=True), None)
        choice_seed = None if seed is None else seed + index
        for text, finish, stop_reason in stream_text(model, tokenizer, sequence, max_tokens, temperature, stop, choice_seed):
            if text or finish is not None:
                yield chunk(index, text, finish, stop_reason)


def server_sent_events(chunks: Iterator[dict]) -> Iterator[str]:
    """`data: <json>` events, then `data: [DONE]`, as OpenAI's streaming responses end."""
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
