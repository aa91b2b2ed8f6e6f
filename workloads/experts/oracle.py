"""The programmatic oracle: exact labels from the reference solution (privileged)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from workloads.config import ConfigError
from workloads.experts.types import ExpertLabels, StepCandidates, StudentState, first_step


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
