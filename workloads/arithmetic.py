"""Multi-step arithmetic: a seeded, verifiable task family with step-by-step solutions.

A problem is a left-to-right chain `7+5-3`; its solution shows one step per operation and
ends with the answer:

    Q: 7+5-3
    7+5=12
    12-3=9
    Answer: 9

Every step is checkable on its own (`check_steps`), which is what TRI's repair loop and
DistIL's oracle expert need; `check_answer` is the exact-match reward. Intermediate values
stay in [0, max_value] so the model never has to learn signs.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

if TYPE_CHECKING:
    from workloads.tasks import TaskConfig

P = TypeVar("P")

ANSWER_MARKER = "Answer:"
_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def expression(self) -> str:
        text = str(self.operands[0])
        for op, value in zip(self.operators, self.operands[1:]):
            text += f"{op}{value}"
        return text

    @property
    def key(self) -> str:
        return self.expression

    @property
    def prompt(self) -> str:
        return f"Q: {self.expression}\n"

    def steps(self) -> list[str]:
        lines, total = [], self.operands[0]
        for op, value in zip(self.operators, self.operands[1:]):
            result = _OPS[op](total, value)
            lines.append(f"{total}{op}{value}={result}")
            total = result
        return lines

    def values(self) -> list[int]:
        """The running value before the first operation and after each one."""
        values = [self.operands[0]]
        for op, value in zip(self.operators, self.operands[1:]):
            values.append(_OPS[op](values[-1], value))
        return values

    @property
    def answer(self) -> int:
        total = self.operands[0]
        for op, value in zip(self.operators, self.operands[1:]):
            total = _OPS[op](total, value)
        return total

    @property
    def solution(self) -> str:
        return "\n".join(self.steps() + [f"{ANSWER_MARKER} {self.answer}"]) + "\n"

    @property
    def outcome(self) -> str:
        """What a correct completion must end with (privileged feedback without the steps)."""
        return f"{ANSWER_MARKER} {self.answer}\n"


def _sample_problem(rng: random.Random, cfg: TaskConfig) -> Problem | None:
    num_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    operands = [rng.randint(0, cfg.max_operand)]
    operators, total = [], operands[0]
    for _ in range(num_ops):
        op = rng.choice(cfg.operator_set)
        value = rng.randint(0, cfg.max_operand)
        total = _OPS[op](total, value)
        if not 0 <= total <= cfg.max_value:
            return None
        operators.append(op)
        operands.append(value)
    return Problem(tuple(operands), tuple(operators))


def distinct_splits(sample: Callable[[random.Random], P | None], key: Callable[[P], str], cfg: TaskConfig,
                    seed: int) -> tuple[list[P], list[P]]:
    """Disjoint train and held-out problems with distinct keys, the same for the same (cfg, seed);
    `sample` draws one problem or None (a rejected draw)."""
    rng = random.Random(seed)
    wanted = cfg.num_train + cfg.num_eval
    seen: dict[str, P] = {}
    attempts = 0
    while len(seen) < wanted:
        attempts += 1
        if attempts > 50 * wanted:
            raise ValueError(
                f"task: only {len(seen)} distinct problems exist for these settings, "
                f"{wanted} requested (raise max_ops/max_operand or lower num_train/num_eval)"
            )
        problem = sample(rng)
        if problem is not None:
            seen.setdefault(key(problem), problem)
    problems = list(seen.values())
    return problems[cfg.num_eval :], problems[: cfg.num_eval]


def generate_splits(cfg: TaskConfig, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Disjoint train and held-out eval problems, the same for the same (cfg, seed)."""
    return distinct_splits(lambda rng: _sample_problem(rng, cfg), lambda p: p.expression, cfg, seed)


def extract_answer(completion: str) -> str | None:
    """The text after the last `Answer:` marker, first line only; None when absent."""
    if ANSWER_MARKER not in completion:
        return None
    return completion.rsplit(ANSWER_MARKER, 1)[1].strip().split("\n", 1)[0].strip()


def check_answer(problem: Problem, completion: str) -> bool:
    """Exact match of the final answer (the 0/1 verifier reward)."""
    answer = extract_answer(completion)
    return answer is not None and re.fullmatch(r"-?\d+", answer) is not None and int(answer) == problem.answer


@dataclasses.dataclass
class StepVerdict:
    steps: list[bool]
    first_failure: int | None  # index of the first wrong or malformed step, None if all pass
    answer_correct: bool


def check_steps(problem: Problem, completion: str) -> StepVerdict:
    """Check each solution line: arithmetic is right and it continues from the previous total."""
    lines = [line for line in completion.strip().split("\n") if line.strip()]
    step_lines = [line for line in lines if not line.startswith(ANSWER_MARKER)]
    verdicts, total = [], problem.operands[0]
    for index, line in enumerate(step_lines):
        match = _STEP.match(line)
        ok = False
        if match and index < len(problem.operators):
            a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
            expected_op, expected_b = problem.operators[index], problem.operands[index + 1]
            ok = (a, op, b) == (total, expected_op, expected_b) and c == _OPS[op](a, b)
            total = c if ok else total
        verdicts.append(ok)
    if len(step_lines) < len(problem.operators):
        verdicts.extend([False] * (len(problem.operators) - len(step_lines)))
    first_failure = next((i for i, ok in enumerate(verdicts) if not ok), None)
    return StepVerdict(verdicts, first_failure, check_answer(problem, completion))


def _chain(solution: str) -> tuple[int, list[tuple[str, int, int]]]:
    """(first operand, [(operator, operand, value after it)]) read back from a reference solution."""
    lines = [line for line in solution.strip().split("\n") if line.strip() and not line.startswith(ANSWER_MARKER)]
    steps = [_STEP.match(line) for line in lines]
    if not steps or any(step is None for step in steps):
        raise ValueError(f"not an arithmetic solution: {solution[:60]!r}")
    return int(steps[0][1]), [(step[2], int(step[3]), int(step[4])) for step in steps]


def correct_next_lines(solution: str, written: str) -> tuple[list[str], str]:
    """What may correctly follow `written` (a student's completion so far), given the reference
    `solution`: (the lines that can end the current line, each with its newline, or [""] for
    "stop now"; the partial line already written).

    Complete lines the student wrote are judged one by one: a line that performs the next step
    correctly (in either order for + and *) moves on; any other line is a mistake that moves
    nothing, so what follows it is the correct next step from the student's last correct value,
    which also corrects the mistake. After the right answer line, only stopping is correct."""
    first, chain = _chain(solution)
    done, answered = 0, False

    def targets() -> list[str]:
        if answered:
            return [""]
        if done == len(chain):
            return [f"{ANSWER_MARKER} {chain[-1][2]}\n"]
        before = first if done == 0 else chain[done - 1][2]
        op, operand, after = chain[done]
        lines = [f"{before}{op}{operand}={after}\n"]
        if op in "+*" and before != operand:
            lines.append(f"{operand}{op}{before}={after}\n")
        return lines

    *complete, partial = written.split("\n")
    for line in complete:
        if answered or line + "\n" not in targets():
            continue
        if line.startswith(ANSWER_MARKER):
            answered = True
        else:
            done += 1
    return targets(), partial


WRONG_CHARACTERS = "0123456789+-=\n"  # what a student's slip writes instead of the right character


def correct_continuation(solution: str, written: str, rng: random.Random) -> str:
    """A correct way to go on from `written` to the end (`correct_next_lines`): end a wrong
    line, then the correct lines from the last correct value, one valid line chosen at random
    where several are (both orders of a + step), through the answer line."""
    continuation = ""
    while True:
        lines, partial = correct_next_lines(solution, written + continuation)
        if lines == [""]:
            return continuation
        fitting = [line for line in lines if line.startswith(partial)]
        continuation += rng.choice(fitting)[len(partial):] if fitting else "\n"


def recovery_example(problem: Problem, rng: random.Random) -> tuple[str, str]:
    """(a wrong start, the correct continuation from it): the solution up to a random digit or
    operator, which is replaced by a wrong character, then up to two more of the solution's
    characters within that line (a slip the student has carried on from); the target is
    `correct_continuation`. Trains an expert to label the states a student reaches after a
    mistake, not only the reference's own."""
    solution = problem.solution
    at = rng.choice([i for i, c in enumerate(solution) if c.isdigit() or c in _OPS])
    wrong = rng.choice([c for c in WRONG_CHARACTERS if c != solution[at]])
    line_end = solution.index("\n", at)
    written = solution[:at] + wrong + solution[at + 1 : min(at + 1 + rng.randint(0, 2), line_end)]
    return written, correct_continuation(solution, written, rng)


class ArithmeticTask:
    """The arithmetic task behind `workloads.tasks`: checked in process by the answer's exact match."""

    OPERATORS: ClassVar[str] = "".join(_OPS)
    DEFAULT_OPERATORS: ClassVar[str] = "+-"
    needs_verifier: ClassVar[bool] = False

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def splits(self, seed: int) -> tuple[list[Problem], list[Problem]]:
        return generate_splits(self.cfg, seed)

    def check(self, problem: Problem, completion: str) -> bool:
        return check_answer(problem, completion)
