"""Step-verified traces: task families whose every step can be checked on its own.

A trace is one step per line. A step *verifies* when the value it states is the true value of
that quantity for the problem, judged without the steps before it: after a wrong step, a later
step that states the right value still verifies. That is what makes a milestone exist for TRI
(a later verified step to infill towards), and why `verify_trace` is not
`workloads.arithmetic.check_steps` (which follows the student's own chain).

Families (`STEP_TASKS`):
- `arithmetic`: the project's chain arithmetic with long settings (4-6 operations by default);
  step i is `v_i op x = v_(i+1)` with the true running values, the last step `Answer: v_n`.
- `units`: exact unit conversions along a chain (`3 wk = 21 d`, `21 d = 504 h`, ...); step i
  states the quantity in the i-th unit of the chain, the last step `Answer: <value> <unit>`.
  The decimal chains (metric, mass, volume, data) need only the next unit and its power of ten:
  what a tiny model learns in a minute; time and imperial need real multiplication.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import ClassVar, Protocol

from workloads.arithmetic import ANSWER_MARKER, Problem as ArithmeticProblem, distinct_splits, generate_splits
from workloads.config import require


@dataclasses.dataclass
class TraceConfig:
    """Which step-structured task and how long its traces are."""

    task: str = "arithmetic"  # arithmetic or units
    min_steps: int = 4  # fewest operations (arithmetic) or conversions (units); the answer line adds one step
    max_steps: int = 6  # most
    max_operand: int = 9  # arithmetic: largest operand
    max_quantity: int = 99  # units: largest starting quantity
    chains: str = ""  # units: comma-separated UNIT_CHAINS names to draw from; empty: all
    max_value: int = 99  # arithmetic: running values stay in [0, max_value]
    num_train: int = 1000  # training problems
    num_eval: int = 200  # held-out problems

    section: ClassVar[str] = "traces"

    def validate(self) -> None:
        require(self.task in STEP_TASKS, "task", f"expected one of {', '.join(STEP_TASKS)}, got {self.task!r}")
        require(1 <= self.min_steps <= self.max_steps, "min_steps", "need 1 <= min_steps <= max_steps")
        longest = STEP_TASKS[self.task].LONGEST
        require(self.min_steps <= longest, "min_steps", f"task {self.task} has chains of at most {longest} steps")
        require(self.max_operand >= 1, "max_operand", "must be >= 1")
        require(self.max_quantity >= 1, "max_quantity", "must be >= 1")
        require(self.max_value >= self.max_operand, "max_value", "must be >= max_operand")
        require(self.num_train >= 1 and self.num_eval >= 1, "num_train", "num_train and num_eval must be >= 1")
        unknown = [name for name in self.chain_names() if name not in UNIT_CHAINS]
        require(not unknown, "chains", f"unknown chains {unknown}: expected names from {', '.join(UNIT_CHAINS)}")
        if self.task == "units":
            longest = max(len(UNIT_CHAINS[name]) - 1 for name in self.chain_names() or UNIT_CHAINS)
            require(self.min_steps <= longest, "min_steps", f"the chosen chains have at most {longest} conversions")

    def chain_names(self) -> list[str]:
        return [name.strip() for name in self.chains.split(",") if name.strip()]


@dataclasses.dataclass
class TraceVerdict:
    steps: list[str]  # the trace's non-empty lines
    verified: list[bool]  # one per step written, each judged on its own
    first_failure: int | None  # first step that does not verify (a missing step counts), None if none
    solved: bool  # every reference step written and verified, nothing after the answer


def split_steps(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


class StepTask(Protocol):
    LONGEST: ClassVar[int]

    def splits(self, config: TraceConfig, seed: int) -> tuple[list, list]: ...

    def reference(self, problem) -> list[str]: ...

    def parse(self, key: str): ...

    def verify_step(self, problem, index: int, step: str) -> bool: ...


def verify_trace(task: StepTask, problem, text: str) -> TraceVerdict:
    """Every step of `text` judged on its own, and the first that fails."""
    steps = split_steps(text)
    expected = len(task.reference(problem))
    verified = [task.verify_step(problem, index, step) for index, step in enumerate(steps)]
    failures = [index for index, ok in enumerate(verified) if not ok]
    if len(steps) < expected:
        failures.append(len(steps))  # the first missing step
    first = min(failures) if failures else None
    return TraceVerdict(steps, verified, first, first is None and len(steps) == expected)


class ArithmeticSteps:
    """`workloads.arithmetic` problems with long chains; the answer line is the last step."""

    LONGEST: ClassVar[int] = 50

    def splits(self, config: TraceConfig, seed: int) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
        """The arithmetic task's own sampler (`workloads.arithmetic.generate_splits`) at these lengths."""
        from workloads.tasks import TaskConfig

        return generate_splits(TaskConfig(min_ops=config.min_steps, max_ops=config.max_steps, max_operand=config.max_operand,
                                          max_value=config.max_value, num_train=config.num_train, num_eval=config.num_eval), seed)

    def reference(self, problem: ArithmeticProblem) -> list[str]:
        return [*problem.steps(), f"{ANSWER_MARKER} {problem.answer}"]

    def parse(self, key: str) -> ArithmeticProblem:
        """The problem whose key is `key` (its expression, e.g. "7+5-3"); ValueError if it is not one."""
        match = re.fullmatch(r"\s*(\d+)((?:\s*[+\-*]\s*\d+)+)\s*", key)
        if match is None:
            raise ValueError(f"problem: {key!r} is not an arithmetic chain such as '7+5-3'")
        tail = re.findall(r"([+\-*])\s*(\d+)", match[2])
        return ArithmeticProblem((int(match[1]), *(int(v) for _, v in tail)), tuple(op for op, _ in tail))

    def verify_step(self, problem: ArithmeticProblem, index: int, step: str) -> bool:
        if index == len(problem.operators):
            answer = re.fullmatch(rf"{re.escape(ANSWER_MARKER)}\s*(-?\d+)", step)
            return answer is not None and int(answer[1]) == problem.answer
        if index > len(problem.operators):
            return False
        match = re.fullmatch(r"(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)", step)
        if match is None:
            return False
        values = problem.values()
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        before, expected_op, operand, after = values[index], problem.operators[index], problem.operands[index + 1], values[index + 1]
        same = (a, b) == (before, operand) or (op in "+*" and (a, b) == (operand, before))
        return same and op == expected_op and c == after


# Exact conversion chains: (unit, how many of the next unit it holds); the last unit holds none.
UNIT_CHAINS: dict[str, list[tuple[str, int]]] = {
    "time": [("wk", 7), ("d", 24), ("h", 60), ("min", 60), ("s", 1000), ("ms", 0)],
    "imperial": [("mi", 1760), ("yd", 3), ("ft", 12), ("in", 0)],
    "metric": [("km", 10), ("hm", 10), ("dam", 10), ("m", 10), ("dm", 10), ("cm", 10), ("mm", 0)],
    "mass": [("t", 1000), ("kg", 1000), ("g", 1000), ("mg", 0)],
    "volume": [("kl", 10), ("hl", 10), ("dal", 10), ("l", 10), ("dl", 10), ("cl", 10), ("ml", 0)],
    "data": [("TB", 1000), ("GB", 1000), ("MB", 1000), ("kB", 1000), ("B", 8), ("bit", 0)],
}


@dataclasses.dataclass(frozen=True)
class Conversion:
    quantity: int
    units: tuple[str, ...]  # the chain walked, first to last
    factors: tuple[int, ...]  # one per step

    @property
    def key(self) -> str:
        return f"{self.quantity} {'>'.join(self.units)}"

    @property
    def prompt(self) -> str:
        return f"Q: convert {self.quantity} {self.units[0]} to {self.units[-1]}\n"

    def values(self) -> list[int]:
        """The quantity in each unit of the chain."""
        values = [self.quantity]
        for factor in self.factors:
            values.append(values[-1] * factor)
        return values

    @property
    def answer(self) -> str:
        return f"{self.values()[-1]} {self.units[-1]}"


class UnitSteps:
    """Unit conversion along a chain: each step multiplies by one exact factor."""

    LONGEST: ClassVar[int] = max(len(chain) - 1 for chain in UNIT_CHAINS.values())

    def splits(self, config: TraceConfig, seed: int) -> tuple[list[Conversion], list[Conversion]]:
        chosen = config.chain_names() or list(UNIT_CHAINS)
        chains = [UNIT_CHAINS[name] for name in chosen if len(UNIT_CHAINS[name]) - 1 >= config.min_steps]

        def sample(rng: random.Random) -> Conversion:
            chain = rng.choice(chains)
            length = rng.randint(config.min_steps, min(config.max_steps, len(chain) - 1))
            start = rng.randint(0, len(chain) - 1 - length)
            walked = chain[start:start + length + 1]
            return Conversion(rng.randint(1, config.max_quantity), tuple(u for u, _ in walked), tuple(f for _, f in walked[:-1]))

        return distinct_splits(sample, lambda p: p.key, config, seed)

    def reference(self, problem: Conversion) -> list[str]:
        values = problem.values()
        steps = [f"{values[i]} {problem.units[i]} = {values[i + 1]} {problem.units[i + 1]}" for i in range(len(problem.factors))]
        return [*steps, f"{ANSWER_MARKER} {problem.answer}"]

    def parse(self, key: str) -> Conversion:
        """The problem whose key is `key` (quantity and the units walked, e.g. "4 km>hm>dam"); each
        unit must follow the one before in a chain of UNIT_CHAINS. ValueError naming what is wrong."""
        match = re.fullmatch(r"\s*(\d+)\s+(\w+(?:>\w+)+)\s*", key)
        if match is None:
            raise ValueError(f"problem: {key!r} is not a conversion such as '4 km>hm>dam'")
        units = match[2].split(">")
        for chain in UNIT_CHAINS.values():
            names = [unit for unit, _ in chain]
            if units[0] in names and names[names.index(units[0]):names.index(units[0]) + len(units)] == units:
                start = names.index(units[0])
                return Conversion(int(match[1]), tuple(units), tuple(f for _, f in chain[start:start + len(units) - 1]))
        raise ValueError(f"problem: {' > '.join(units)} is not a walk along one chain of {', '.join(UNIT_CHAINS)}")

    def verify_step(self, problem: Conversion, index: int, step: str) -> bool:
        reference = self.reference(problem)
        # The stated values are exact integers in fixed units: the step verifies iff it says the
        # reference's step (whitespace aside).
        return index < len(reference) and " ".join(step.split()) == reference[index]


STEP_TASKS: dict[str, StepTask] = {"arithmetic": ArithmeticSteps(), "units": UnitSteps()}
