"""A local causal LM as the expert (any directory or hub id), through the LM toolkit: one padded
forward pass per batch on the model's device, and only the top-k leave the device."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from workloads.config import ConfigError
from workloads.experts.types import (
    ExpertLabels,
    StepCandidates,
    StudentState,
    TokenizerMismatch,
    expert_sequences,
    first_step,
    grouped_candidates,
    privileged_prefix,
)
from workloads.lm import bos_ids, continuation_logprobs, generate_ids, load_lm, next_token_logprobs, top_k_logprobs


class HFExpert:
    """A local causal LM; every state of a batch in one padded forward pass."""

    def __init__(self, model_path: str, student_tokenizer, top_k: int, temperature: float = 1.0,
                 alignment: str = "tokens"):
        self.model, self.tokenizer = load_lm(model_path)
        self.model.eval().to("cuda" if torch.cuda.is_available() else "cpu")  # the GPU its actor was given, if any
        self.student, self.top_k, self.temperature, self.alignment = student_tokenizer, top_k, temperature, alignment
        self.expert_id = f"hf:{model_path}:t{temperature}"
        if student_tokenizer.get_vocab() != self.tokenizer.get_vocab() and alignment == "tokens":
            raise TokenizerMismatch(
                f"expert.model: {model_path} uses another tokenizer than the student ({len(self.tokenizer)} vs "
                f"{len(student_tokenizer)} tokens); labels are token ids, so set expert.alignment=text to align on text")

    @classmethod
    def from_model(cls, model, tokenizer, top_k: int, temperature: float = 1.0, expert_id: str = "self") -> "HFExpert":
        """An expert around a model already in memory (self-distillation: the student itself, shown
        the privileged feedback). Its forward passes are the model's own, so a sharded model labels
        collectively: every rank must call `label` together."""
        expert = cls.__new__(cls)
        expert.model, expert.tokenizer, expert.student = model, tokenizer, tokenizer
        expert.top_k, expert.temperature, expert.alignment, expert.expert_id = top_k, temperature, "tokens", expert_id
        return expert

    def _top_k(self, sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, log-probs) [B, L, k] of the expert's top-k next tokens at every position of
        `sequences`: computed on the model's device, and only the top-k come back (a full
        vocabulary row per position would be gigabytes per batch at 150k tokens)."""
        with torch.no_grad():
            logprobs = next_token_logprobs(self.model, sequences, self.tokenizer.pad_token_id, self.temperature)
            ids, values = top_k_logprobs(logprobs, self.top_k)
        return ids.cpu().numpy().astype(np.int64), values.cpu().numpy().astype(np.float32)

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        if not states:
            return []
        if self.alignment == "text":
            return [self._label_text(state) for state in states]
        sequences, starts = expert_sequences(states, self.tokenizer)
        top_ids, top_values = self._top_k([s[:-1] if len(s) > 1 else s for s in sequences])
        labels = []
        for row, (state, start) in enumerate(zip(states, starts)):
            steps = len(state.completion_ids)
            if steps == 0:
                labels.append(ExpertLabels.empty(self.top_k))
                continue
            window = slice(start - 1, start - 1 + steps)
            labels.append(ExpertLabels(top_ids[row, window], top_values[row, window], np.ones(steps, bool)))
        return labels

    def candidates(self, states: Sequence[StudentState], k: int, max_step_tokens: int = 32) -> list[StepCandidates]:
        """Sample k next steps per state from the expert (privileged prefix included), cut each at
        its first step end, keep the distinct ones and score them with one forward pass:
        log p_E(step | state) at the expert's temperature. Steps that do not end within
        `max_step_tokens` are dropped."""
        if self.alignment == "text":
            raise ConfigError("expert.alignment=text: step candidates are student token ids; use alignment=tokens")
        if not states:
            return []
        sequences, _ = expert_sequences(states, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        _, _, generated = generate_ids(self.model, self.tokenizer, sequences, max_step_tokens, self.temperature, k)
        generated = generated.tolist()
        per_state = [list(dict.fromkeys(filter(None, (first_step(g, self.tokenizer) for g in generated[row * k : (row + 1) * k]))))
                     for row in range(len(sequences))]
        pairs = [(sequence, step) for sequence, steps in zip(sequences, per_state) for step in steps]
        scores = np.zeros(0, np.float32)
        if pairs:  # every candidate of every state in one forward pass
            with torch.no_grad():
                scores = continuation_logprobs(self.model, [c for c, _ in pairs], [x for _, x in pairs], pad,
                                               self.temperature).cpu().numpy().astype(np.float32)
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
        bos = bos_ids(self.tokenizer)
        expert_ids = bos + encoded["input_ids"]
        by_offset = {start: index + len(bos) for index, (start, _) in enumerate(encoded["offset_mapping"])}
        all_ids, all_values = self._top_k([expert_ids])
        steps = len(pieces)
        ids = np.zeros((steps, self.top_k), np.int64)
        values = np.full((steps, self.top_k), -math.inf, np.float32)
        valid = np.zeros(steps, bool)
        for j, offset in enumerate(starts):
            position = by_offset.get(offset)
            if position is None or position == 0:
                continue
            mass: dict[int, float] = {}
            for expert_token, value in zip(all_ids[0, position - 1], all_values[0, position - 1]):
                mapped = self.student.encode(self.tokenizer.decode([int(expert_token)]), add_special_tokens=False)
                student_token = mapped[0] if mapped else self.student.eos_token_id
                mass[student_token] = mass.get(student_token, 0.0) + math.exp(float(value))
            ranked = sorted(mass.items(), key=lambda item: -item[1])[: self.top_k]
            fillers = list(itertools.islice((t for t in range(len(self.student)) if t not in mass), self.top_k - len(ranked)))
            ids[j] = [t for t, _ in ranked] + fillers
            values[j, : len(ranked)] = [math.log(p) for _, p in ranked]
            valid[j] = True
        return ExpertLabels(ids, values, valid)
