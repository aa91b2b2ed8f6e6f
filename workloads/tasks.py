"""Verifiable text tasks for the student pipelines (`sft`, `distil`): one config, a registry.

    task = task_for(TaskConfig(kind="python"))
    train, held_out = task.splits(seed=0)
    task.check(problem, completion)          # arithmetic: checked here, exactly
    task.verify_job(problem, completion)     # python: a job for the sandboxed verifier actors

Both tasks are chains of `min_ops`..`max_ops` seeded operations with operands up to
`max_operand`; a problem has a `prompt`, a reference `solution` (what SFT trains on and a
privileged expert may read, like its `outcome`: the answer line, the tests) and a `key` (what
the dataset hash covers).
- `arithmetic` (`workloads.arithmetic`): `Q: 7+5-3` -> one line per step and `Answer: 9`,
  checked by exact match of the answer.
- `python` (`workloads.programs`): `Q: f(x): add 3, multiply by 2` -> a Python function,
  checked by running it against the task's tests in the sandboxed Python verifier; any
  program that passes is correct, not only the reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal, Protocol

from workloads.arithmetic import ArithmeticTask
from workloads.config import ConfigError, require
from workloads.programs import ProgramTask

TaskKind = Literal["arithmetic", "python"]


@dataclasses.dataclass
class TaskConfig:
    """The verifiable task: its kind and problem sizes."""

    kind: TaskKind = "arithmetic"  # arithmetic or python (see workloads/tasks.py)
    min_ops: int = 1  # fewest operations per problem
    max_ops: int = 2  # most operations per problem
    max_operand: int = 9  # largest operand
    max_value: int = 99  # arithmetic: intermediate results stay in [0, max_value]
    # empty: the task's own default (arithmetic "+-", python "+-*/%?"); see each task's OPERATORS
    operators: str = ""
    num_tests: int = 4  # python: test inputs per problem
    num_train: int = 2000  # training problems
    num_eval: int = 200  # held-out problems

    section: ClassVar[str] = "task"

    def validate(self) -> None:
        require(self.kind in TASKS, "kind", f"expected one of {sorted(TASKS)}")
        require(1 <= self.min_ops <= self.max_ops, "min_ops", "need 1 <= min_ops <= max_ops")
        require(self.max_operand >= 1, "max_operand", "must be >= 1")
        require(self.max_value >= self.max_operand, "max_value", "must be >= max_operand")
        known = TASKS[self.kind].OPERATORS
        require(set(self.operators) <= set(known), "operators", f"task {self.kind} knows {known!r}")
        require(self.num_tests >= 1, "num_tests", "must be >= 1")
        require(self.num_train >= 1 and self.num_eval >= 1, "num_train", "num_train and num_eval must be >= 1")

    @property
    def operator_set(self) -> str:
        return self.operators or TASKS[self.kind].DEFAULT_OPERATORS


class Problem(Protocol):
    prompt: str
    solution: str
    outcome: str  # what a correct completion produces: arithmetic its answer line, python its tests
    key: str


FeedbackKind = Literal["solution", "answer"]
# Privileged feedback an expert may read and the student never sees: the whole reference
# solution, or only what a correct completion must produce (the answer, the tests).
FEEDBACK: dict[str, Callable[[Problem], str]] = {
    "solution": lambda problem: problem.solution,
    "answer": lambda problem: problem.outcome,
}


def privileged_feedback(problem: Problem, kind: str) -> str:
    return FEEDBACK[kind](problem)


class Task(Protocol):
    """Every task has `splits(seed)`; a task with `needs_verifier` False also has
    `check(problem, completion) -> bool` (decided in process), one with True has
    `verify_job(problem, completion) -> dict` (a job for the Python verifier actors)."""

    OPERATORS: ClassVar[str]
    DEFAULT_OPERATORS: ClassVar[str]
    needs_verifier: ClassVar[bool]

    def splits(self, seed: int) -> tuple[list, list]: ...


TASKS: dict[str, type] = {"arithmetic": ArithmeticTask, "python": ProgramTask}


def task_for(cfg: TaskConfig) -> Task:
    cfg.validate()
    return TASKS[cfg.kind](cfg)


def completion_budget(problems: Sequence[Problem], tokenizer, slack: int = 4) -> int:
    """Tokens a completion may need: the longest reference solution, its eos and some slack
    (a budget below that makes some problems unsolvable and caps Pass@N)."""
    if not problems:
        raise ConfigError("task: no problems to size the completion budget from")
    longest = max(len(tokenizer.encode(p.solution, add_special_tokens=False)) for p in problems)
    return longest + 1 + slack
