from workloads.arithmetic import Problem, check_answer, check_steps, extract_answer, generate_splits
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
