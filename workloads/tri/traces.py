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
- `python`: straight-line programs (`x0 = 7`, `x1 = x0 * 3`, `x2 = x1 // 2`, ...,
  `answer = x5`), checked in the sandboxed Python verifier's step mode
  (`workloads.verifiers.python_sandbox`): step i verifies when, run after the reference's steps
  before it, it leaves the variable the reference's step i sets with the reference's value.
  Steps read earlier variables rather than restating values, so a later step verifies after
  an earlier error whenever it is itself right. A step the sandbox stops (a timeout, a memory
  limit) fails with that status, which `TraceVerdict.checker_errors` counts.

Steps are checked in batches (`StepTask.check_steps`: one call per trace, or per round of the
repair loop), which the sandboxed family needs; the others check each step in process.
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
from typing import ClassVar, Protocol

from workloads.arithmetic import ANSWER_MARKER, Problem as ArithmeticProblem, distinct_splits, generate_splits
from workloads.config import require


@dataclasses.dataclass
class TraceConfig:
    """Which step-structured task and how long its traces are."""

    task: str = "arithmetic"  # arithmetic, units or python
    min_steps: int = 4  # fewest operations (arithmetic) or conversions (units); the answer line adds one step
    max_steps: int = 6  # most
    max_operand: int = 9  # arithmetic and python: largest operand
    max_quantity: int = 99  # units: largest starting quantity
    chains: str = ""  # units: comma-separated UNIT_CHAINS names to draw from; empty: all
    max_value: int = 99  # arithmetic and python: running values stay in [0, max_value]
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
    checker_errors: int = 0  # steps the checker could not judge (a sandbox timeout): counted as failing


def split_steps(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


# A step's verdict: "passed", "failed", or the checker's own failure ("timeout", "sandbox_error", ...)
PASSED, FAILED = "passed", "failed"


class StepTask(Protocol):
    LONGEST: ClassVar[int]

    def splits(self, config: TraceConfig, seed: int) -> tuple[list, list]: ...

    def reference(self, problem) -> list[str]: ...

    def parse(self, key: str): ...

    def check_steps(self, items: list[tuple]) -> list[str]:
        """The verdict of each (problem, step index, step text), judged on its own."""
        ...


class InProcessSteps:
    """A family whose steps are checked in process, one `verify_step` at a time."""

    def check_steps(self, items: list[tuple]) -> list[str]:
        return [PASSED if self.verify_step(problem, index, step) else FAILED for problem, index, step in items]

    def verify_step(self, problem, index: int, step: str) -> bool:
        raise NotImplementedError


def verify_traces(task: StepTask, problems: list, texts: list[str]) -> list[TraceVerdict]:
    """Every step of every text judged on its own (one `check_steps` call), and each trace's
    first failing step."""
    steps = [split_steps(text) for text in texts]
    statuses = iter(task.check_steps([(problem, index, step) for problem, trace in zip(problems, steps)
                                      for index, step in enumerate(trace)]))
    verdicts = []
    for problem, trace in zip(problems, steps):
        judged = [next(statuses) for _ in trace]
        verified = [status == PASSED for status in judged]
        failures = [index for index, ok in enumerate(verified) if not ok]
        expected = len(task.reference(problem))
        if len(trace) < expected:
            failures.append(len(trace))  # the first missing step
        first = min(failures) if failures else None
        verdicts.append(TraceVerdict(trace, verified, first, first is None and len(trace) == expected,
                                     sum(status not in (PASSED, FAILED) for status in judged)))
    return verdicts


def verify_trace(task: StepTask, problem, text: str) -> TraceVerdict:
    """Every step of `text` judged on its own, and the first that fails."""
    (verdict,) = verify_traces(task, [problem], [text])
    return verdict


class ArithmeticSteps(InProcessSteps):
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


class UnitSteps(InProcessSteps):
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


PY_OPERATORS = ("+", "-", "*", "//", "%")


@dataclasses.dataclass(frozen=True)
class Program:
    start: int
    operations: tuple[tuple[str, int], ...]  # (operator, operand), applied in order

    @property
    def key(self) -> str:
        return f"{self.start}" + "".join(f"; {op}{operand}" for op, operand in self.operations)

    @property
    def prompt(self) -> str:
        # each operation named by the variable it sets: the step that writes x2 reads "x2: %9"
        operations = "".join(f"; x{i + 1}: {op}{operand}" for i, (op, operand) in enumerate(self.operations))
        return f"Q: python x0 = {self.start}{operations}\n"

    def values(self) -> list[int]:
        values = [self.start]
        for op, operand in self.operations:
            values.append(apply_operation(values[-1], op, operand))
        return values

    @property
    def answer(self) -> int:
        return self.values()[-1]


def apply_operation(value: int, op: str, operand: int) -> int:
    return {"+": value + operand, "-": value - operand, "*": value * operand, "//": value // operand,
            "%": value % operand}[op]


class PythonSteps:
    """Straight-line programs, one assignment per step, checked in the Python sandbox (see the
    module docstring). The sandbox pool starts on first use, in whatever process checks."""

    LONGEST: ClassVar[int] = 50
    STEP_TIMEOUT_S: ClassVar[float] = 2.0  # a step is one assignment: anything slower is stopped

    def splits(self, config: TraceConfig, seed: int) -> tuple[list[Program], list[Program]]:
        return distinct_splits(lambda rng: self._sample(rng, config), lambda p: p.key, config, seed)

    @staticmethod
    def _sample(rng: random.Random, config: TraceConfig) -> Program | None:
        """A start value and operations whose running values stay in [0, max_value]; None (a
        rejected draw) when one leaves it."""
        start = rng.randint(0, config.max_value)
        value, operations = start, []
        for _ in range(rng.randint(config.min_steps, config.max_steps)):
            op, operand = rng.choice(PY_OPERATORS), rng.randint(2, max(2, config.max_operand))
            value = apply_operation(value, op, operand)
            if not 0 <= value <= config.max_value:
                return None
            operations.append((op, operand))
        return Program(start, tuple(operations))

    def reference(self, problem: Program) -> list[str]:
        steps = [f"x0 = {problem.start}"]
        steps += [f"x{i + 1} = x{i} {op} {operand}" for i, (op, operand) in enumerate(problem.operations)]
        return [*steps, f"answer = x{len(problem.operations)}"]

    def reference_state(self, problem: Program, index: int) -> dict[str, int]:
        """What the reference's step `index` sets."""
        values = problem.values()
        return {"answer": values[-1]} if index == len(values) else {f"x{index}": values[index]}

    def parse(self, key: str) -> Program:
        """The problem whose key is `key` (a start and operations applied in order, e.g.
        "7; *3; +4; //2"); ValueError if it is not one."""
        match = re.fullmatch(r"\s*(\d+)((?:\s*;\s*(?://|[+\-*%])\s*\d+)+)\s*", key)
        if match is None:
            raise ValueError(f"problem: {key!r} is not a program such as '7; *3; +4; //2'")
        return Program(int(match[1]), tuple((op, int(v)) for op, v in re.findall(r"(//|[+\-*%])\s*(\d+)", match[2])))

    def step_job(self, problem: Program, index: int, step: str):
        """The sandbox job for one step: the reference's steps before it, then the step; the
        judge compares the variable the reference's step sets."""
        from workloads.verifiers.python_sandbox import Limits, PythonJob

        prefix = "\n".join(self.reference(problem)[:index])
        return PythonJob("", limits=Limits(timeout_s=self.STEP_TIMEOUT_S), steps=(prefix, step),
                         reference_states=({}, self.reference_state(problem, index)))

    def check_steps(self, items: list[tuple]) -> list[str]:
        jobs = [(i, problem, index, step) for i, (problem, index, step) in enumerate(items)
                if index < len(self.reference(problem))]
        statuses = [FAILED] * len(items)  # a step past the reference's end never verifies
        if jobs:
            verdicts = process_sandbox().run(lambda pool: pool.verify_batch(
                [self.step_job(problem, index, step) for _, problem, index, step in jobs]))
            for (i, *_), verdict in zip(jobs, verdicts):
                statuses[i] = step_status(verdict)
        return statuses


def step_status(verdict) -> str:
    """A step job's verdict as a step's: its second step (the candidate's) passed or failed; a
    job the sandbox stopped keeps its status (timeout, memory_limit, sandbox_error)."""
    if verdict.steps is None:
        return verdict.status if verdict.status not in ("passed", "failed") else FAILED
    candidate = verdict.steps[-1].get("status", "sandbox_error")
    return PASSED if candidate == "passed" else FAILED if candidate in ("failed", "runtime_error", "syntax_error") else candidate


_SANDBOX: list = []  # this process's SandboxThread, started on first use (module state: the task itself is pickled)
_SANDBOX_LOCK = threading.Lock()


def process_sandbox() -> "SandboxThread":
    with _SANDBOX_LOCK:
        if not _SANDBOX:
            _SANDBOX.append(SandboxThread())
        return _SANDBOX[0]


class SandboxThread:
    """A `PythonSandboxPool` on its own event loop in a daemon thread, so that synchronous code
    (the repair loop, a Ray Data actor, a Serve replica) can check steps: the pool's zygote
    pipes belong to one loop, which `asyncio.run` per call would not give."""

    def __init__(self, num_workers: int = 2):
        import asyncio

        from workloads.verifiers.python_sandbox import PythonSandboxPool

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="tri-sandbox", daemon=True).start()
        self.pool = PythonSandboxPool(num_workers=num_workers)
        self.run(lambda pool: pool.start())

    def run(self, call):
        import asyncio

        return asyncio.run_coroutine_threadsafe(call(self.pool), self.loop).result()


STEP_TASKS: dict[str, StepTask] = {"arithmetic": ArithmeticSteps(), "units": UnitSteps(), "python": PythonSteps()}
