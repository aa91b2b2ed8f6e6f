"""TRI's training data: (Q, P, S, M) quadruples cut from verified traces, as a `datasets` dataset.

From a trace whose steps s_0 .. s_(n-1) all verify, every cut with 0 <= i < j <= n-1 and
j - i <= `max_bridge` gives premise P = s_0 .. s_(i-1) (empty when i = 0: repair must work
when the very first step fails), bridge M = s_i .. s_(j-1) and milestone S = s_j. P and S are
verified again on their own before a row is kept, so a row never rests on a step that fails.
"""

from __future__ import annotations

from collections.abc import Iterable

from workloads.tri.traces import PASSED, StepTask, split_steps, verify_traces

FEATURES = {  # column -> datasets dtype (the schema the dataset is built and tested against)
    "task": "string",  # the step task family
    "problem": "string",  # the problem's key
    "question": "string",  # Q, as the model reads it
    "premise": "string",  # P: the verified steps before the bridge, one per line ("" at the start)
    "milestone": "string",  # S: the verified step the bridge must reach
    "bridge": "string",  # M: the steps in between, one per line (the target)
    "premise_steps": "int32",
    "bridge_steps": "int32",
}


def lines(steps: list[str]) -> str:
    return "".join(step + "\n" for step in steps)


def quadruples(task_name: str, task: StepTask, problems: Iterable, max_bridge: int) -> list[dict]:
    """Every (Q, P, S, M) cut of each problem's reference trace (see the module docstring)."""
    rows = []
    problems = list(problems)
    verdicts = verify_traces(task, problems, [lines(task.reference(problem)) for problem in problems])
    for problem, verdict in zip(problems, verdicts):
        if not verdict.solved:
            raise ValueError(f"{task_name}: the reference trace of {problem.key} does not verify ({verdict})")
        steps = verdict.steps
        for i in range(len(steps) - 1):
            for j in range(i + 1, min(len(steps), i + max_bridge + 1)):
                premise, milestone = steps[:i], steps[j]
                if not (all(verdict.verified[:i]) and verdict.verified[j]):  # each judged on its own
                    continue
                rows.append({"task": task_name, "problem": problem.key, "question": problem.prompt, "premise": lines(premise),
                             "milestone": milestone, "bridge": lines(steps[i:j]), "premise_steps": i, "bridge_steps": j - i})
    return rows


def quadruple_dataset(rows: list[dict]):
    """The rows as a `datasets.Dataset` with the `FEATURES` schema."""
    import datasets

    features = datasets.Features({name: datasets.Value(dtype) for name, dtype in FEATURES.items()})
    return datasets.Dataset.from_list(rows, features=features)


def bridge_reaches(task: StepTask, problem, premise: str, bridge: str, milestone: str) -> tuple[bool, str]:
    """The verifier's label of a generated bridge (DPO's chosen / rejected): (ok, failure category).

    Categories: `malformed` (no step), `over length` (more steps than the gap to S), `wrong step`
    (a bridge step does not verify), `misses milestone` (every step verifies but S is not the
    step that follows)."""
    before, between = split_steps(premise), split_steps(bridge)
    reference = task.reference(problem)
    places = range(len(before), len(reference))  # where the milestone could stand
    statuses = task.check_steps([(problem, j, milestone) for j in places]
                                + [(problem, len(before) + k, step) for k, step in enumerate(between)])
    at = next((j for j, status in zip(places, statuses) if status == PASSED), None)
    if not between:
        return False, "malformed"
    if at is not None and len(before) + len(between) > at:
        return False, "over length"
    if not all(status == PASSED for status in statuses[len(places):]):
        return False, "wrong step"
    if at is None or len(before) + len(between) != at:
        return False, "misses milestone"
    return True, ""
