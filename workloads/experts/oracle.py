"""The programmatic oracle: exact labels from the reference solution (privileged)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from workloads.config import ConfigError
from workloads.experts.types import ExpertLabels, StepCandidates, StudentState, first_step


def require_character_tokenizer(tokenizer, kind: str) -> None:
    """Oracles label characters: one token per character of the solution."""
    probe = "Q: 12+34-5\n12+34=46\nAnswer: 41\n"
    if len(tokenizer.encode(probe, add_special_tokens=False)) != len(probe):
        raise ConfigError(f"expert.kind={kind}: needs a character-level student tokenizer (model.bpe_merges=0)")


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
        require_character_tokenizer(tokenizer, "oracle")
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


class RecoveringOracle:
    """Arithmetic only: from any state the student reaches, the distribution over correct
    continuations from that state (privileged: it reads the reference solution).

    Unlike `OracleExpert` it never abstains. After a wrong line, the correct next line starts
    again from the student's last correct value (which also corrects the mistake); in the
    middle of a wrong line, the correct move is to end it; where several next steps are correct
    (`12+34=46` or `34+12=46`), their mass is split evenly, so the label is a real distribution
    over the valid next characters, not a point mass on one reference. Needs a character-level
    student tokenizer, like the plain oracle."""

    def __init__(self, tokenizer, top_k: int):
        require_character_tokenizer(tokenizer, "recovering_oracle")
        self.tokenizer, self.top_k, self.expert_id = tokenizer, top_k, "oracle:recovering"
        self.fillers = list(range(top_k + 2))

    def _char_id(self, char: str) -> int:
        return self.tokenizer.encode(char, add_special_tokens=False)[0]

    def distribution(self, solution: str, written: str) -> dict[int, float]:
        """{next token id: probability} after `written`."""
        from workloads.arithmetic import correct_next_lines

        lines, partial = correct_next_lines(solution, written)
        if lines == [""]:
            return {self.tokenizer.eos_token_id: 1.0}
        following = [line[len(partial)] for line in lines if line.startswith(partial) and len(line) > len(partial)]
        if not following:  # a wrong character in this line: end it, the next line corrects it
            return {self._char_id("\n"): 1.0}
        probabilities: dict[int, float] = {}
        for char in following:
            token = self._char_id(char)
            probabilities[token] = probabilities.get(token, 0.0) + 1.0 / len(following)
        return probabilities

    def _solution(self, state: StudentState) -> str:
        if not state.privileged:
            raise ConfigError("expert.kind=recovering_oracle: needs the reference solution (set expert.privileged=true)")
        return state.privileged

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        labels = []
        for state in states:
            solution = self._solution(state)
            text = self.tokenizer.decode(list(state.completion_ids), skip_special_tokens=True)
            steps = len(state.completion_ids)
            ids = np.zeros((steps, self.top_k), np.int64)
            logprobs = np.full((steps, self.top_k), -math.inf, np.float32)
            for j in range(steps):
                try:
                    best = sorted(self.distribution(solution, text[:j]).items(), key=lambda item: -item[1])[: self.top_k]
                except ValueError as exc:
                    raise ConfigError(f"expert.kind=recovering_oracle: arithmetic tasks only ({exc})") from None
                chosen = [token for token, _ in best]
                ids[j] = chosen + [f for f in self.fillers if f not in chosen][: self.top_k - len(chosen)]
                logprobs[j, : len(best)] = [math.log(p) for _, p in best]
            labels.append(ExpertLabels(ids, logprobs, np.ones(steps, bool)))
        return labels

    def candidates(self, states: Sequence[StudentState], k: int) -> list[StepCandidates]:
        """At a line boundary: every correct next line (or eos), equally likely."""
        from workloads.arithmetic import correct_next_lines

        out = []
        for state in states:
            text = self.tokenizer.decode(list(state.completion_ids), skip_special_tokens=True)
            lines, partial = correct_next_lines(self._solution(state), text)
            if partial:
                out.append(StepCandidates.abstain())
                continue
            steps = [(self.tokenizer.eos_token_id,) if line == "" else
                     tuple(self.tokenizer.encode(line, add_special_tokens=False)) for line in lines][:k]
            out.append(StepCandidates(steps, np.full(len(steps), -math.log(len(steps)), np.float32)))
        return out
