"""What experts exchange with the student: visited states, token-level labels, step-level
candidates, the expert interface and its config (no model code here)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import ClassVar, Literal, Protocol

import numpy as np

from workloads.config import ConfigError, require
from workloads.endpoints import EndpointError


class TokenizerMismatch(ConfigError):
    """The expert's tokenizer differs from the student's and text alignment is off."""


class MalformedExpertResponse(EndpointError):
    """An endpoint answered, but not with usable prompt log-probs."""


@dataclasses.dataclass(frozen=True)
class StudentState:
    prompt_ids: tuple[int, ...]  # the encoded prompt ([bos] + formatted prompt), student tokenizer
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


ORACLES = ("oracle", "recovering_oracle")  # the programmatic experts: they read the reference solution


@dataclasses.dataclass
class ExpertConfig:
    """The expert that labels the states the student visits."""

    # oracle (the default: a point mass on the reference), recovering_oracle (arithmetic: correct
    # continuations from any state), hf (a local model; with no model, the pipeline's own, trained to
    # use the privileged feedback) or openai (an endpoint)
    kind: Literal["oracle", "recovering_oracle", "hf", "openai"] = "oracle"
    # hf: a model directory or hub id (empty: the pipeline trains one, see distil's expert_sft_steps);
    # openai: the served model's name
    model: str = ""
    endpoint: str = ""  # openai: base URL (http://host:8000)
    api_key: str = ""  # openai: bearer token, if the endpoint needs one
    top_k: int = 8  # token level: top-k tokens per state; step level: K candidates
    temperature: float = 1.0  # the expert's distribution is softmax(logits / temperature)
    privileged: bool = True  # show the expert privileged feedback the student never sees
    # what it is shown (workloads.tasks.FEEDBACK): the reference solution, or only the answer (python: the
    # tests); the oracles always read the solution
    feedback: Literal["solution", "answer"] = "answer"
    alignment: Literal["tokens", "text"] = "tokens"  # tokens (shared tokenizer) or text (hf: align on text)
    batch_size: int = 32  # states per backend call
    cache_size: int = 20000  # labelled states kept in memory per actor
    timeout_s: float = 30.0  # per request to the expert
    retries: int = 2  # retries per request
    num_actors: int = 1  # expert-query actors (states routed by hash)
    num_gpus: float = 0.0  # per expert actor; an HF expert runs on its GPU when it has one

    section: ClassVar[str] = "expert"

    @property
    def feedback_kind(self) -> str:
        """What the expert is shown: the oracles read the solution whatever `feedback` says."""
        return "solution" if self.kind in ORACLES else self.feedback

    def validate(self) -> None:
        require(self.kind in ("oracle", "recovering_oracle", "hf", "openai"), "kind",
                "expected oracle, recovering_oracle, hf or openai")
        require(self.feedback in ("solution", "answer"), "feedback", "expected solution or answer")
        require(self.kind not in ORACLES or self.privileged, "privileged",
                f"kind={self.kind} reads the reference solution: needs privileged=true")
        require(self.kind != "openai" or bool(self.endpoint), "endpoint", "kind=openai needs the endpoint's base URL")
        require(self.top_k >= 1, "top_k", "must be >= 1")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.alignment in ("tokens", "text"), "alignment", "expected tokens or text")
        require(self.alignment == "tokens" or self.kind == "hf", "alignment", "text alignment needs kind=hf")
        require(self.batch_size >= 1 and self.num_actors >= 1, "batch_size", "batch_size and num_actors must be >= 1")
        require(self.cache_size >= 0, "cache_size", "must be >= 0")
        require(self.num_gpus >= 0, "num_gpus", "must be >= 0")
        require(self.timeout_s > 0 and self.retries >= 0, "timeout_s", "need timeout_s > 0 and retries >= 0")


def privileged_prefix(privileged: str) -> str:
    """How privileged feedback is shown to an LM expert: before the prompt, as a reference."""
    return f"Reference:\n{privileged}\n" if privileged else ""


def expert_sequences(states: Sequence[StudentState], tokenizer) -> tuple[list[list[int]], list[int]]:
    """What an LM expert reads per state ([bos], privileged prefix, prompt, completion) and where
    the completion starts. The prefix goes after the prompt's BOS when it has one, first otherwise."""
    sequences, starts = [], []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for state in states:
        extra = tokenizer.encode(privileged_prefix(state.privileged), add_special_tokens=False)
        lead = len(bos) if bos and list(state.prompt_ids[: len(bos)]) == bos else 0
        head = list(state.prompt_ids[:lead]) + extra + list(state.prompt_ids[lead:])
        sequences.append(head + list(state.completion_ids))
        starts.append(len(head))
    return sequences, starts
