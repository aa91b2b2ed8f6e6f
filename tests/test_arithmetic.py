import random

from workloads.arithmetic import (
    Problem, check_answer, check_steps, correct_continuation, extract_answer, generate_splits, recovery_example,
)
from workloads.tasks import TaskConfig


def test_splits_are_seeded_disjoint_and_in_range():
    cfg = TaskConfig(num_train=500, num_eval=100)
    train, held_out = generate_splits(cfg, seed=3)
    again, _ = generate_splits(cfg, seed=3)
    other, _ = generate_splits(cfg, seed=4)
    assert [p.expression for p in train] == [p.expression for p in again]
    assert [p.expression for p in train] != [p.expression for p in other]
    assert not {p.expression for p in train} & {p.expression for p in held_out}
    for problem in train + held_out:
        assert cfg.min_ops <= len(problem.operators) <= cfg.max_ops
        assert 0 <= problem.answer <= cfg.max_value


def test_solution_format_and_exact_checker():
    problem = Problem((7, 5, 3), ("+", "-"))
    assert problem.prompt == "Q: 7+5-3\n"
    assert problem.solution == "7+5=12\n12-3=9\nAnswer: 9\n"
    assert check_answer(problem, problem.solution)
    assert check_answer(problem, "junk\nAnswer: 1\nAnswer: 9")  # the last marker counts
    assert not check_answer(problem, "Answer: 9.0")
    assert not check_answer(problem, "the answer is 9")
    assert extract_answer("no marker") is None


def test_step_checker_finds_the_first_wrong_step():
    problem = Problem((7, 5, 3), ("+", "-"))
    verdict = check_steps(problem, problem.solution)
    assert verdict.steps == [True, True] and verdict.first_failure is None and verdict.answer_correct
    wrong_first = check_steps(problem, "7+5=13\n13-3=10\nAnswer: 10\n")
    assert wrong_first.steps == [False, False] and wrong_first.first_failure == 0
    wrong_second = check_steps(problem, "7+5=12\n12-3=8\nAnswer: 8\n")
    assert wrong_second.first_failure == 1 and not wrong_second.answer_correct
    truncated = check_steps(problem, "7+5=12\n")
    assert truncated.steps == [True, False] and truncated.first_failure == 1


def test_the_correct_continuation_after_a_slip_ends_the_line_and_redoes_the_step():
    problem = Problem((12, 34, 5), ("+", "-"))  # 12+34=46, 46-5=41
    continuations = {correct_continuation(problem.solution, "12+34=47", random.Random(seed)) for seed in range(20)}
    assert continuations == {"\n12+34=46\n46-5=41\nAnswer: 41\n", "\n34+12=46\n46-5=41\nAnswer: 41\n"}
    assert correct_continuation(problem.solution, "12+34=46\n46-5=4", random.Random(0)) == "1\nAnswer: 41\n"
    assert correct_continuation(problem.solution, "12+34=46\n46-5=41\nAnswer: 41\n", random.Random(0)) == ""


def test_recovery_examples_start_with_a_slip_and_end_correct():
    rng = random.Random(0)
    for problem in generate_splits(TaskConfig(num_train=200, num_eval=2), seed=1)[0]:
        written, target = recovery_example(problem, rng)
        assert not problem.solution.startswith(written)  # a character the solution does not have there
        assert not check_answer(problem, written) and check_answer(problem, written + target)
