"""Small Python programs from a spec in words: a seeded task checked by running the code.

A problem is a chain of operations on an integer; the student writes the function:

    Q: f(x): add 3, multiply by 2, if odd add 1
    def f(x):
        x = x + 3
        x = x * 2
        if x % 2 == 1:
            x = x + 1
        return x

The reference solution above is one correct program among many (`return (x + 3) * 2` is
another). Correctness is decided by the sandboxed Python verifier running the problem's
tests (`assert f(-4) == -2` for `num_tests` seeded inputs), so `verify_job` builds the job
and `ProgramTask.needs_verifier` tells the pipelines to send it to the verifier actors.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from workloads.arithmetic import distinct_splits

if TYPE_CHECKING:
    from workloads.tasks import TaskConfig

FUNCTION = "f"
INDENT = "    "


@dataclasses.dataclass(frozen=True)
class Operation:
    spec: str  # how the prompt says it, with {n} for the operand
    lines: tuple[str, ...]  # the reference statements, with {n}
    apply: Callable[[int, int], int]
    min_operand: int = 1


# Keyed by one character, like the arithmetic task's operators (`task.operators=+-*`).
OPERATIONS: dict[str, Operation] = {
    "+": Operation("add {n}", ("x = x + {n}",), lambda x, n: x + n),
    "-": Operation("subtract {n}", ("x = x - {n}",), lambda x, n: x - n),
    "*": Operation("multiply by {n}", ("x = x * {n}",), lambda x, n: x * n, min_operand=2),
    "/": Operation("floor-divide by {n}", ("x = x // {n}",), lambda x, n: x // n, min_operand=2),
    "%": Operation("mod {n}", ("x = x % {n}",), lambda x, n: x % n, min_operand=2),
    "?": Operation("if odd add {n}", ("if x % 2 == 1:", INDENT + "x = x + {n}"), lambda x, n: x + n if x % 2 == 1 else x),
}


@dataclasses.dataclass(frozen=True)
class Program:
    operators: tuple[str, ...]
    operands: tuple[int, ...]
    test_inputs: tuple[int, ...]

    @property
    def spec(self) -> str:
        return ", ".join(OPERATIONS[op].spec.format(n=n) for op, n in zip(self.operators, self.operands))

    @property
    def key(self) -> str:
        return self.spec

    @property
    def prompt(self) -> str:
        return f"Q: {FUNCTION}(x): {self.spec}\n"

    @property
    def solution(self) -> str:
        body = [line.format(n=n) for op, n in zip(self.operators, self.operands) for line in OPERATIONS[op].lines]
        return "\n".join([f"def {FUNCTION}(x):", *(INDENT + line for line in body), INDENT + "return x"]) + "\n"

    def __call__(self, x: int) -> int:
        for op, n in zip(self.operators, self.operands):
            x = OPERATIONS[op].apply(x, n)
        return x

    @property
    def tests(self) -> str:
        return "".join(f"assert {FUNCTION}({x}) == {self(x)}\n" for x in self.test_inputs)

    @property
    def outcome(self) -> str:
        """What a correct program must produce (privileged feedback without the program): its tests."""
        return self.tests


def _sample_program(rng: random.Random, cfg: TaskConfig) -> Program:
    num_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    operators = tuple(rng.choice(cfg.operator_set) for _ in range(num_ops))
    operands = tuple(rng.randint(min(OPERATIONS[op].min_operand, cfg.max_operand), cfg.max_operand) for op in operators)
    span = 2 * cfg.max_operand
    inputs = tuple(rng.sample(range(-span, span + 1), min(cfg.num_tests, 2 * span + 1)))
    return Program(operators, operands, inputs)


def generate_splits(cfg: TaskConfig, seed: int) -> tuple[list[Program], list[Program]]:
    """Disjoint train and held-out programs (distinct specs), the same for the same (cfg, seed)."""
    return distinct_splits(lambda rng: _sample_program(rng, cfg), lambda p: p.key, cfg, seed)


class ProgramTask:
    """The Python task behind `workloads.tasks`: a completion is correct when its code passes the
    problem's tests in the sandboxed verifier."""

    OPERATORS: ClassVar[str] = "".join(OPERATIONS)
    DEFAULT_OPERATORS: ClassVar[str] = "".join(OPERATIONS)
    needs_verifier: ClassVar[bool] = True

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def splits(self, seed: int) -> tuple[list[Program], list[Program]]:
        return generate_splits(self.cfg, seed)

    def verify_job(self, problem: Program, completion: str) -> dict:
        """The completion is the program; the tests are the problem's asserts."""
        return {"code": completion, "tests": problem.tests}
