"""Experts that label student-visited states with next-token distributions (DistIL).

A `StudentState` is one student rollout: its prompt and completion token ids (student
tokenizer) plus `privileged` text the expert may read and the student never sees (the
reference solution, a verifier's error message). Labelling it returns, for every completion
position j, the expert's top-k next tokens and their log-probs given prompt + completion[:j]:
exactly the k + 1 buckets `workloads.distill.TopKDistribution` trains on.

Experts (one interface: `expert_id`, `top_k`, `label(states)`):
- `OracleExpert`: the exact distribution over correct next tokens given the reference solution
  (privileged): a point mass on the reference; it abstains once the student has left it.
- `HFExpert`: a local causal LM (any directory or hub id); one batched forward pass.
- `EndpointExpert`: an OpenAI-compatible completions endpoint with vLLM's `prompt_logprobs`,
  all states of a batch in one request (the prompt is a list of token-id lists); step
  candidates with `n`, `stop` and a second, scoring request.
`CachedExpert` wraps any of them: repeated states are answered from memory, keyed by
(expert id, state hash), misses are sent in batches.

The student and the expert must share a tokenizer, because labels are token ids. A mismatch
is refused (`TokenizerMismatch`) unless `alignment="text"`: then the expert reads the text,
and its distribution is mapped onto the student's tokens at every position where both
tokenizers start a token (see `HFExpert`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar, Literal, Protocol

import numpy as np

from workloads.config import ConfigError, require
from workloads.endpoints import EndpointError, post_completions


class TokenizerMismatch(ConfigError):
    """The expert's tokenizer differs from the student's and text alignment is off."""


class MalformedExpertResponse(EndpointError):
    """An endpoint answered, but not with usable prompt log-probs."""


@dataclasses.dataclass(frozen=True)
class StudentState:
    prompt_ids: tuple[int, ...]  # bos + prompt, student tokenizer
    completion_ids: tuple[int, ...]  # the student's continuation (up to and including eos)
    privileged: str = ""

    def key(self, expert_id: str, top_k: int) -> str:
        raw = json.dumps([expert_id, top_k, self.prompt_ids, self.completion_ids, self.privileged])
        return hashlib.sha1(raw.encode()).hexdigest()


@dataclasses.dataclass
class ExpertLabels:
    """Per completion position: the expert's top-k token ids and log-probs ([T, k] each).
    `valid[j]` is False where the expert has no opinion (text alignment found no shared boundary)."""

    token_ids: np.ndarray
    logprobs: np.ndarray
    valid: np.ndarray

    @classmethod
    def empty(cls, top_k: int) -> ExpertLabels:
        return cls(np.zeros((0, top_k), np.int64), np.zeros((0, top_k), np.float32), np.zeros(0, bool))


@dataclasses.dataclass
class StepCandidates:
    """Step level: K candidate next steps (student token ids, each ending at a line end or eos)
    with the expert's sequence log-probs [K]. No candidates: the expert abstains at this state."""

    token_ids: list[tuple[int, ...]]
    logprobs: np.ndarray

    @classmethod
    def abstain(cls) -> StepCandidates:
        return cls([], np.zeros(0, np.float32))


class Expert(Protocol):
    expert_id: str
    top_k: int

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]: ...

    def candidates(self, states: Sequence[StudentState], k: int) -> list[StepCandidates]: ...


def ends_step(token_id: int, tokenizer) -> bool:
    """A step (one solution line) ends with a token that holds a line break, or with eos."""
    return token_id == tokenizer.eos_token_id or "\n" in tokenizer.decode([token_id])


def first_step(token_ids: Sequence[int], tokenizer) -> tuple[int, ...] | None:
    """`token_ids` up to and including the first step end; None when no step ends in them."""
    for index, token in enumerate(token_ids):
        if ends_step(token, tokenizer):
            return tuple(token_ids[: index + 1])
    return None


def grouped_candidates(per_state: list[list[tuple[int, ...]]], scores: np.ndarray) -> list[StepCandidates]:
    """StepCandidates per state from its distinct steps and their scores, all states' scores
    concatenated in order (one scoring pass); a state without steps abstains."""
    out, offset = [], 0
    for steps in per_state:
        out.append(StepCandidates(steps, scores[offset : offset + len(steps)]) if steps else StepCandidates.abstain())
        offset += len(steps)
    return out


@dataclasses.dataclass
class ExpertConfig:
    kind: Literal["oracle", "hf", "openai"] = "oracle"
    model: str = ""  # hf: a model directory or hub id; openai: the served model's name
    endpoint: str = ""  # openai: base URL (http://host:8000)
    api_key: str = ""
    top_k: int = 8
    temperature: float = 1.0  # the expert's distribution is softmax(logits / temperature)
    privileged: bool = True  # pass the reference solution to the expert (the oracle needs it)
    alignment: Literal["tokens", "text"] = "tokens"
    batch_size: int = 32  # states per backend call
    cache_size: int = 20000  # labelled states kept in memory per actor
    timeout_s: float = 30.0
    retries: int = 2
    num_actors: int = 1

    section: ClassVar[str] = "expert"

    def validate(self) -> None:
        require(self.kind in ("oracle", "hf", "openai"), "kind", "expected oracle, hf or openai")
        require(self.kind != "hf" or bool(self.model), "model", "kind=hf needs a model directory or hub id")
        require(self.kind != "openai" or bool(self.endpoint), "endpoint", "kind=openai needs the endpoint's base URL")
        require(self.top_k >= 1, "top_k", "must be >= 1")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.alignment in ("tokens", "text"), "alignment", "expected tokens or text")
        require(self.alignment == "tokens" or self.kind == "hf", "alignment", "text alignment needs kind=hf")
        require(self.batch_size >= 1 and self.num_actors >= 1, "batch_size", "batch_size and num_actors must be >= 1")
        require(self.cache_size >= 0, "cache_size", "must be >= 0")
        require(self.timeout_s > 0 and self.retries >= 0, "timeout_s", "need timeout_s > 0 and retries >= 0")


def _top_k_rows(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row, largest first: (ids [T, k], log-probs [T, k])."""
    ids = np.argsort(-logprobs, axis=-1, kind="stable")[:, :k]
    return ids.astype(np.int64), np.take_along_axis(logprobs, ids, axis=-1).astype(np.float32)


# ---------------------------------------------------------------- oracle
class OracleExpert:
    """The correct next character of the reference solution (privileged), for any task.

    The reference text (then eos) is the only completion the oracle knows to be correct (for
    the python task other programs may pass the tests too; the oracle only vouches for the
    reference), so while the student's
    completion is still a prefix of it the correct next token is unique: a point mass, the
    other k - 1 entries carrying probability 0 and the tail exactly 0. After the student's first
    wrong token no continuation is correct; the oracle abstains there (`valid` False), so every
    label it gives is exact."""

    def __init__(self, tokenizer, top_k: int):
        probe = "Q: 12+34-5\n12+34=46\nAnswer: 41\n"
        if len(tokenizer.encode(probe, add_special_tokens=False)) != len(probe):
            raise ConfigError("expert.kind=oracle: needs a character-level student tokenizer (model.bpe_merges=0)")
        self.tokenizer, self.top_k, self.expert_id = tokenizer, top_k, "oracle:reference"
        # k - 1 distinct filler ids with probability 0, so every label has exactly k entries
        self.fillers = list(range(top_k + 1))

    def correct_ids(self, state: StudentState) -> list[int]:
        """The only correct completion: the reference solution (privileged), then eos."""
        if not state.privileged:
            raise ConfigError("expert.kind=oracle: needs the reference solution (set expert.privileged=true)")
        return self.tokenizer.encode(state.privileged, add_special_tokens=False) + [self.tokenizer.eos_token_id]

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        labels = []
        for state in states:
            correct = self.correct_ids(state)
            steps = len(state.completion_ids)
            ids = np.zeros((steps, self.top_k), np.int64)
            logprobs = np.full((steps, self.top_k), -math.inf, np.float32)
            valid = np.zeros(steps, bool)
            for j in range(min(steps, len(correct))):
                ids[j] = [correct[j]] + [f for f in self.fillers if f != correct[j]][: self.top_k - 1]
                logprobs[j, 0], valid[j] = 0.0, True
                if state.completion_ids[j] != correct[j]:
                    break  # off the solution from here on
            labels.append(ExpertLabels(ids, logprobs, valid))
        return labels

    def candidates(self, states: Sequence[StudentState], k: int) -> list[StepCandidates]:
        """The one correct next step with log-prob 0 while the student's steps so far are the
        solution's; abstains once they are not."""
        out = []
        for state in states:
            correct = self.correct_ids(state)
            done = len(state.completion_ids)
            if tuple(correct[:done]) != state.completion_ids or done >= len(correct):
                out.append(StepCandidates.abstain())
                continue
            out.append(StepCandidates([first_step(correct[done:], self.tokenizer)], np.zeros(1, np.float32)))
        return out


# ---------------------------------------------------------------- local HF model
def privileged_prefix(privileged: str) -> str:
    """How privileged feedback is shown to an LM expert: before the prompt, as a reference."""
    return f"Reference:\n{privileged}\n" if privileged else ""


def expert_sequences(states: Sequence[StudentState], tokenizer) -> tuple[list[list[int]], list[int]]:
    """What an LM expert reads per state (bos, privileged prefix, prompt, completion) and where
    the completion starts."""
    sequences, starts = [], []
    for state in states:
        extra = tokenizer.encode(privileged_prefix(state.privileged), add_special_tokens=False)
        head = list(state.prompt_ids[:1]) + extra + list(state.prompt_ids[1:])
        sequences.append(head + list(state.completion_ids))
        starts.append(len(head))
    return sequences, starts


class HFExpert:
    """A local causal LM; every state of a batch in one padded forward pass."""

    def __init__(self, model_path: str, student_tokenizer, top_k: int, temperature: float = 1.0,
                 alignment: str = "tokens"):
        from workloads.tiny_lm import load_lm

        self.model, self.tokenizer = load_lm(model_path)
        self.model.eval()
        self.student, self.top_k, self.temperature, self.alignment = student_tokenizer, top_k, temperature, alignment
        self.expert_id = f"hf:{model_path}:t{temperature}"
        if student_tokenizer.get_vocab() != self.tokenizer.get_vocab() and alignment == "tokens":
            raise TokenizerMismatch(
                f"expert.model: {model_path} uses another tokenizer than the student ({len(self.tokenizer)} vs "
                f"{len(student_tokenizer)} tokens); labels are token ids, so set expert.alignment=text to align on text")

    def _logprobs(self, sequences: list[list[int]]):
        """[B, L, V] next-token log-probs of right-padded `sequences`."""
        import torch

        from workloads.completions import right_padded

        ids, mask = right_padded(sequences, self.tokenizer.pad_token_id)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        return torch.log_softmax(logits / self.temperature, dim=-1)

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        if not states:
            return []
        if self.alignment == "text":
            return [self._label_text(state) for state in states]
        sequences, starts = expert_sequences(states, self.tokenizer)
        logprobs = self._logprobs([s[:-1] if len(s) > 1 else s for s in sequences]).numpy()
        labels = []
        for row, (state, start) in enumerate(zip(states, starts)):
            steps = len(state.completion_ids)
            if steps == 0:
                labels.append(ExpertLabels.empty(self.top_k))
                continue
            ids, values = _top_k_rows(logprobs[row, start - 1 : start - 1 + steps], self.top_k)
            labels.append(ExpertLabels(ids, values, np.ones(steps, bool)))
        return labels

    def candidates(self, states: Sequence[StudentState], k: int, max_step_tokens: int = 32) -> list[StepCandidates]:
        """Sample k next steps per state from the expert (privileged prefix included), cut each at
        its first step end, keep the distinct ones and score them with one forward pass:
        log p_E(step | state) at the expert's temperature. Steps that do not end within
        `max_step_tokens` are dropped."""
        import torch

        from workloads.completions import continuation_logprobs

        if self.alignment == "text":
            raise ConfigError("expert.alignment=text: step candidates are student token ids; use alignment=tokens")
        if not states:
            return []
        sequences, _ = expert_sequences(states, self.tokenizer)
        width = max(map(len, sequences))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences])  # left padding for generate
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
        with torch.no_grad():
            generated = self.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
                num_return_sequences=k, max_new_tokens=max_step_tokens, pad_token_id=pad,
                eos_token_id=self.tokenizer.eos_token_id)[:, width:].tolist()
        per_state = [list(dict.fromkeys(filter(None, (first_step(g, self.tokenizer) for g in generated[row * k : (row + 1) * k]))))
                     for row in range(len(sequences))]
        pairs = [(sequence, step) for sequence, steps in zip(sequences, per_state) for step in steps]
        scores = np.zeros(0, np.float32)
        if pairs:  # every candidate of every state in one forward pass
            with torch.no_grad():
                scores = continuation_logprobs(self.model, [c for c, _ in pairs], [x for _, x in pairs], pad,
                                               self.temperature).numpy().astype(np.float32)
        return grouped_candidates(per_state, scores)

    def _label_text(self, state: StudentState) -> ExpertLabels:
        """Text alignment: the expert reads the decoded text with its own tokenizer. At a student
        token that starts where an expert token starts, the expert's next-token distribution is
        mapped onto student tokens (each expert token to the student's first token of its text,
        merging duplicates); positions without a shared boundary get no label."""
        prompt = self.student.decode(list(state.prompt_ids), skip_special_tokens=True)
        pieces = [self.student.decode([t], skip_special_tokens=False) for t in state.completion_ids]
        text = privileged_prefix(state.privileged) + prompt
        starts = []  # character offset where each student completion token starts
        for piece in pieces:
            starts.append(len(text))
            text += piece
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        expert_ids = bos + encoded["input_ids"]
        by_offset = {start: index + len(bos) for index, (start, _) in enumerate(encoded["offset_mapping"])}
        logprobs = self._logprobs([expert_ids])[0].numpy()
        steps = len(pieces)
        ids = np.zeros((steps, self.top_k), np.int64)
        values = np.full((steps, self.top_k), -math.inf, np.float32)
        valid = np.zeros(steps, bool)
        for j, offset in enumerate(starts):
            position = by_offset.get(offset)
            if position is None or position == 0:
                continue
            top_ids, top_values = _top_k_rows(logprobs[position - 1 : position], self.top_k)
            mass: dict[int, float] = {}
            for expert_token, value in zip(top_ids[0], top_values[0]):
                mapped = self.student.encode(self.tokenizer.decode([int(expert_token)]), add_special_tokens=False)
                student_token = mapped[0] if mapped else self.student.eos_token_id
                mass[student_token] = mass.get(student_token, 0.0) + math.exp(float(value))
            ranked = sorted(mass.items(), key=lambda item: -item[1])[: self.top_k]
            fillers = list(itertools.islice((t for t in range(len(self.student)) if t not in mass), self.top_k - len(ranked)))
            ids[j] = [t for t, _ in ranked] + fillers
            values[j, : len(ranked)] = [math.log(p) for _, p in ranked]
            valid[j] = True
        return ExpertLabels(ids, values, valid)


# ---------------------------------------------------------------- OpenAI-compatible endpoint
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


# ---------------------------------------------------------------- cache
class CachedExpert:
    """Answer repeated states from memory (LRU by state hash); send misses in batches."""

    def __init__(self, expert: Expert, batch_size: int = 32, capacity: int = 20000):
        self.expert, self.batch_size, self.capacity = expert, batch_size, capacity
        self.cache: OrderedDict[str, ExpertLabels | StepCandidates] = OrderedDict()
        self.hits = self.misses = self.positions = 0

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        keys = [state.key(self.expert.expert_id, self.expert.top_k) for state in states]
        return self._answer(keys, states, self._label_misses)

    def _label_misses(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        labels = self.expert.label(states)
        self.positions += sum(len(label.valid) for label in labels)
        return labels

    def candidates(self, states: Sequence[StudentState], k: int) -> list[StepCandidates]:
        """Step candidates, cached like labels (under keys of their own)."""
        keys = ["step:" + state.key(self.expert.expert_id, k) for state in states]
        return self._answer(keys, states, lambda chunk: self.expert.candidates(chunk, k))

    def _answer(self, keys: list[str], states: Sequence[StudentState], ask) -> list:
        """Hits from the cache (and repeats within the call), misses asked in batches of `batch_size`."""
        missing: dict[str, StudentState] = {}
        found: dict[str, object] = {}
        for key, state in zip(keys, states):
            if key in self.cache:
                self.cache.move_to_end(key)
                found[key] = self.cache[key]
                self.hits += 1
            elif key in missing:
                self.hits += 1
            else:
                missing[key] = state
                self.misses += 1
        pending = list(missing.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            for (key, _), answer in zip(chunk, ask([state for _, state in chunk])):
                found[key] = answer
                if self.capacity:
                    self.cache[key] = answer
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return [found[key] for key in keys]

    def stats(self) -> dict[str, float]:
        return {"expert_cache_hits": self.hits, "expert_cache_misses": self.misses, "expert_positions": self.positions}


def build_expert(cfg: ExpertConfig, student_tokenizer) -> Expert:
    """The configured backend (not cached; wrap it in `CachedExpert`)."""
    builders = {
        "oracle": lambda: OracleExpert(student_tokenizer, cfg.top_k),
        "hf": lambda: HFExpert(cfg.model, student_tokenizer, cfg.top_k, cfg.temperature, cfg.alignment),
        "openai": lambda: EndpointExpert(cfg.endpoint, cfg.model, student_tokenizer, cfg.top_k, cfg.timeout_s,
                                         cfg.retries, cfg.api_key, cfg.temperature),
    }
    return builders[cfg.kind]()
