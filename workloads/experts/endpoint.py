"""An OpenAI-compatible completions endpoint as the expert (vLLM, `rayworks serve generate`):
labels from vLLM's `prompt_logprobs`, step candidates from `n` samples scored the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from workloads.endpoints import post_completions
from workloads.experts.types import (
    ExpertLabels,
    MalformedExpertResponse,
    StepCandidates,
    StudentState,
    TokenizerMismatch,
    expert_sequences,
    first_step,
    grouped_candidates,
)


def prompt_entries(choice: dict, field: str, sequence: Sequence[int]) -> list:
    """A choice's `prompt_logprobs`: one entry per prompt token, or MalformedExpertResponse."""
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list) or len(entries) != len(sequence):
        got = f"{len(entries)} entries" if isinstance(entries, list) else type(entries).__name__
        raise MalformedExpertResponse(f"{field}: expected one entry per prompt token ({len(sequence)}), got {got}")
    return entries


def parse_prompt_logprobs(choice: dict, index: int, sequence: Sequence[int], start: int, top_k: int,
                          student_tokenizer=None) -> ExpertLabels:
    """ExpertLabels from one choice's vLLM-style `prompt_logprobs`: a list with one entry per
    prompt token (the first is null), each {token_id: {"logprob": x, "decoded_token": s}} or
    {token_id: x}. Anything else raises MalformedExpertResponse naming the field."""
    field = f"choices[{index}].prompt_logprobs"
    entries = prompt_entries(choice, field, sequence)
    steps = len(sequence) - start
    ids = np.zeros((steps, top_k), np.int64)
    values = np.full((steps, top_k), -math.inf, np.float32)
    mismatched = 0
    for j in range(steps):
        position = start + j
        entry = entries[position]
        if not isinstance(entry, dict) or not entry:
            raise MalformedExpertResponse(f"{field}[{position}]: expected a mapping of token id to log-prob, got {entry!r:.80}")
        parsed = []
        for token, value in entry.items():
            logprob = value.get("logprob") if isinstance(value, dict) else value
            try:
                parsed.append((int(token), float(logprob)))
            except (TypeError, ValueError):
                raise MalformedExpertResponse(f"{field}[{position}][{token!r}]: not a token id with a numeric log-prob") from None
            if (student_tokenizer is not None and isinstance(value, dict) and int(token) == sequence[position]
                    and isinstance(value.get("decoded_token"), str)
                    and value["decoded_token"] != student_tokenizer.decode([int(token)])):
                mismatched += 1
        parsed.sort(key=lambda item: -item[1])
        for slot, (token, logprob) in enumerate(parsed[:top_k]):
            ids[j, slot], values[j, slot] = token, logprob
        used = {token for token, _ in parsed[:top_k]}
        fillers = [t for t in range(top_k * 2 + 1) if t not in used][: top_k - min(top_k, len(parsed))]
        ids[j, len(parsed[:top_k]):] = fillers
    if mismatched:
        raise TokenizerMismatch(f"{field}: {mismatched} of the student's tokens decode differently on the endpoint; "
                                "the expert serves a model with another tokenizer")
    return ExpertLabels(ids, values, np.ones(steps, bool))


def actual_token_logprobs(choice: dict, index: int, sequence: Sequence[int], start: int) -> np.ndarray:
    """The log-probs of the tokens actually at prompt positions start.. of one choice's
    `prompt_logprobs` (every vLLM entry carries the actual token, whatever k)."""
    field = f"choices[{index}].prompt_logprobs"
    entries = prompt_entries(choice, field, sequence)
    values = []
    for position in range(start, len(sequence)):
        entry = entries[position]
        value = entry.get(str(sequence[position])) if isinstance(entry, dict) else None
        logprob = value.get("logprob") if isinstance(value, dict) else value
        if not isinstance(logprob, (int, float)) or isinstance(logprob, bool):
            raise MalformedExpertResponse(f"{field}[{position}]: no numeric log-prob for the prompt's token {sequence[position]}")
        values.append(float(logprob))
    return np.asarray(values, np.float32)


class EndpointExpert:
    """An OpenAI-compatible completions endpoint: token labels by scoring prompt + completion with
    `prompt_logprobs`; step candidates by sampling `n` next lines, then scoring them the same way.
    Log-probs are the served model's own (vLLM's prompt log-probs ignore the temperature, which
    only shapes the sampled candidates)."""

    def __init__(self, base_url: str, model: str, student_tokenizer, top_k: int, timeout_s: float = 30.0,
                 retries: int = 2, api_key: str = "", temperature: float = 1.0):
        self.base_url, self.model, self.student, self.top_k = base_url, model, student_tokenizer, top_k
        self.timeout_s, self.retries, self.api_key, self.temperature = timeout_s, retries, api_key, temperature
        self.expert_id = f"openai:{base_url}:{model}"

    def _post(self, body: dict, expected: int) -> list[dict]:
        """The choices of one request, in index order; exactly `expected` of them."""
        choices = post_completions(self.base_url, body, self.timeout_s, self.retries, self.api_key)
        if len(choices) != expected:
            raise MalformedExpertResponse(f"choices: expected {expected}, got {len(choices)}")
        return sorted(choices, key=lambda c: c.get("index", 0))

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        if not states:
            return []
        sequences, starts = expert_sequences(states, self.student)
        body = {"model": self.model, "prompt": sequences, "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": self.top_k}
        choices = self._post(body, len(sequences))
        return [parse_prompt_logprobs(choice, i, sequence, start, self.top_k, self.student)
                for i, (choice, sequence, start) in enumerate(zip(choices, sequences, starts))]

    def sampled_step(self, choice: dict, index: int) -> tuple[int, ...] | None:
        """A sampled choice as a step in student token ids: its text and the line break it stopped
        on, or its text and eos; None when it ran out of tokens first."""
        if choice.get("finish_reason") == "length":
            return None
        if "stop_reason" not in choice:
            raise MalformedExpertResponse(f"choices[{index}].stop_reason: missing; it tells a line end from eos "
                                          "(vLLM and the generate app send it)")
        text = choice["text"]
        if choice["stop_reason"] == "\n":
            return first_step(self.student.encode(text + "\n", add_special_tokens=False), self.student)
        return (*self.student.encode(text, add_special_tokens=False), self.student.eos_token_id)

    def candidates(self, states: Sequence[StudentState], k: int, max_step_tokens: int = 32) -> list[StepCandidates]:
        """Two requests per batch: `n=k` samples per state stopping at a line break, then every
        distinct step scored as part of a prompt (`prompt_logprobs=0`):
        log p_E(step | state) = the sum of the step tokens' prompt log-probs."""
        if not states:
            return []
        sequences, _ = expert_sequences(states, self.student)
        sampled = self._post({"model": self.model, "prompt": sequences, "n": k, "max_tokens": max_step_tokens,
                              "temperature": self.temperature, "stop": ["\n"]}, len(sequences) * k)
        per_state = [list(dict.fromkeys(filter(None, (self.sampled_step(sampled[i], i) for i in range(row * k, (row + 1) * k)))))
                     for row in range(len(sequences))]
        pairs = [(sequence, step) for sequence, steps in zip(sequences, per_state) for step in steps]
        scores = []
        if pairs:
            scored = self._post({"model": self.model, "prompt": [sequence + list(step) for sequence, step in pairs],
                                 "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}, len(pairs))
            scores = [float(actual_token_logprobs(choice, i, sequence + list(step), len(sequence)).sum())
                      for i, (choice, (sequence, step)) in enumerate(zip(scored, pairs))]
        return grouped_candidates(per_state, np.asarray(scores, np.float32))
