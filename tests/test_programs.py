"""The Python program task: seeded problems whose correctness the real sandboxed verifier decides."""

import asyncio

import pytest

from actors.verifiers import TaskChecker
from workloads.config import ConfigError, from_dict
from workloads.programs import OPERATIONS, Program
from workloads.tasks import TaskConfig, completion_budget, task_for
from workloads.lm import build_tokenizer
from workloads.verifiers.python_sandbox import PythonSandboxPool, parse_job

PROGRAM = Program(operators=("+", "*", "?"), operands=(3, 2, 1), test_inputs=(-4, 0, 5))


def run_in_sandbox(jobs: list[dict]) -> list[str]:
    async def verify():
        pool = PythonSandboxPool(num_workers=2)
        try:
            return [v.status for v in await pool.verify_batch([parse_job(job) for job in jobs])]
        finally:
            await pool.close()

    return asyncio.run(verify())


def test_a_problem_reads_as_a_spec_a_reference_program_and_its_tests():
    assert PROGRAM.prompt == "Q: f(x): add 3, multiply by 2, if odd add 1\n"
    assert PROGRAM.solution == ("def f(x):\n    x = x + 3\n    x = x * 2\n    if x % 2 == 1:\n        x = x + 1\n"
                                "    return x\n")
    # (x + 3) * 2 is even, so the conditional never fires: f(-4) = -2, f(0) = 6, f(5) = 16
    assert PROGRAM.tests == "assert f(-4) == -2\nassert f(0) == 6\nassert f(5) == 16\n"
    namespace: dict = {}
    exec(PROGRAM.solution, namespace)  # the reference computes what the tests expect
    assert [namespace["f"](x) for x in range(-9, 10)] == [PROGRAM(x) for x in range(-9, 10)]


def test_splits_are_seeded_disjoint_and_use_the_configured_operators():
    task = task_for(TaskConfig(kind="python", operators="+%", num_train=50, num_eval=10, num_tests=3))
    train, held_out = task.splits(seed=1)
    again, _ = task.splits(seed=1)
    assert [p.key for p in train] == [p.key for p in again]
    assert len(train) == 50 and len(held_out) == 10 and not {p.key for p in train} & {p.key for p in held_out}
    assert all(set(p.operators) <= {"+", "%"} and len(p.test_inputs) == 3 for p in train)
    assert all(n >= OPERATIONS[op].min_operand for p in train for op, n in zip(p.operators, p.operands))


def test_the_verifier_decides_correctness_not_the_reference_text():
    task = task_for(TaskConfig(kind="python"))
    completions = {
        "reference": PROGRAM.solution,
        "another correct program": "def f(x):\n    return (x + 3) * 2\n",
        "wrong arithmetic": "def f(x):\n    x = x + 3\n    x = x * 3\n    return x\n",
        "truncated": "def f(x):\n    x = x + 3\n    x = x *",
        "wrong name": PROGRAM.solution.replace("def f", "def g"),
    }
    statuses = run_in_sandbox([task.verify_job(PROGRAM, text) for text in completions.values()])
    assert dict(zip(completions, statuses)) == {
        "reference": "passed", "another correct program": "passed", "wrong arithmetic": "failed",
        "truncated": "syntax_error", "wrong name": "runtime_error"}


def test_every_generated_reference_passes_its_tests_in_the_sandbox():
    task = task_for(TaskConfig(kind="python", num_train=60, num_eval=20))
    train, held_out = task.splits(seed=0)
    problems = train + held_out
    assert run_in_sandbox([task.verify_job(p, p.solution) for p in problems]) == ["passed"] * len(problems)


def test_task_config_names_the_wrong_field():
    with pytest.raises(ConfigError, match=r"task\.operators: task arithmetic knows"):
        from_dict(TaskConfig, {"operators": "+?"})
    with pytest.raises(ConfigError, match=r"task\.kind"):
        from_dict(TaskConfig, {"kind": "lean"})
    assert from_dict(TaskConfig, {"kind": "python", "operators": "+?"}).operator_set == "+?"


def test_the_completion_budget_fits_the_longest_reference():
    tokenizer = build_tokenizer()
    for kind in ("arithmetic", "python"):
        train, held_out = task_for(TaskConfig(kind=kind)).splits(seed=0)
        longest = max(len(tokenizer.encode(p.solution, add_special_tokens=False)) for p in train + held_out)
        assert completion_budget(train + held_out, tokenizer) == longest + 1 + 4


def test_task_checker_uses_the_verifier_actor_only_for_programs(local_ray):
    python = TaskChecker(TaskConfig(kind="python"))
    assert python.verifier is not None
    assert python([PROGRAM, PROGRAM], [PROGRAM.solution, "def f(x):\n    return x\n"]) == [True, False]
    assert python.stats()["verifier_checks"] == 2

    arithmetic = TaskChecker(TaskConfig())
    problem = task_for(TaskConfig()).splits(seed=0)[0][0]
    assert arithmetic.verifier is None and arithmetic.stats() == {}
    assert arithmetic([problem, problem], [problem.solution, "Answer: -1"]) == [True, False]
