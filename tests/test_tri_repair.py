"""TRI's repair loop without models: ExtractMilestone, what an infill and a regeneration keep,
the next action under each method, bad drafts as verdicts, and the token accounting."""

import math

import pytest

from workloads.lm.infilling import BRIDGE, MILESTONE, PREMISE
from workloads.tri.repair import (
    Attempt,
    apply_infill,
    apply_regeneration,
    extract_milestone,
    infill_prompt,
    regenerate_prompt,
    summarise,
    verify_round,
)
from workloads.tri.traces import STEP_TASKS, Conversion

UNITS = STEP_TASKS["units"]
METRES = Conversion(4, ("km", "hm", "dam", "m", "dm"), (10, 10, 10, 10))  # 40 hm, 400 dam, 4000 m, 40000 dm
REFERENCE = "4 km = 40 hm\n40 hm = 400 dam\n400 dam = 4000 m\n4000 m = 40000 dm\nAnswer: 40000 dm\n"
PROBLEMS = {METRES.key: METRES}


def attempt(trace: str) -> Attempt:
    return Attempt(METRES.key, METRES.prompt, trace=trace, generated_tokens=50, prompt_tokens=10)


@pytest.mark.parametrize("verified, first_failure, window, expected", [
    ([True, False, False, True, True], 1, 3, 3),  # the first later step that verifies
    ([True, False, False, False, True], 1, 2, None),  # beyond the window
    ([True, False, False, False, True], 1, 3, 4),
    ([True, False], 1, 3, None),  # the trace ends
    ([False, True], 0, 1, 1),
])
def test_extract_milestone_scans_the_window_after_the_first_failure(verified, first_failure, window, expected):
    assert extract_milestone(verified, first_failure, window) == expected


def test_tri_infills_between_the_verified_prefix_and_the_milestone():
    broken = attempt("4 km = 40 hm\n40 hm = 401 dam\n401 dam = 4010 m\n4000 m = 40000 dm\nAnswer: 40000 dm\n")
    verify_round(UNITS, PROBLEMS, [broken], window=3)
    assert (broken.first_failure, broken.milestone, broken.action) == (1, 3, "infill")
    assert infill_prompt(broken) == f"{METRES.prompt}{PREMISE}4 km = 40 hm\n{MILESTONE}4000 m = 40000 dm{BRIDGE}"

    apply_infill(broken, "40 hm = 400 dam\n400 dam = 4000 m\n", generated=12, prompt=30)
    assert broken.trace == REFERENCE and broken.infills == 1 and broken.action == ""
    assert (broken.generated_tokens, broken.prompt_tokens) == (62, 40)
    verify_round(UNITS, PROBLEMS, [broken], window=3)
    assert broken.solved and broken.action == "" and broken.first_failure == -1


def test_the_baseline_regenerates_the_suffix_even_when_a_milestone_exists():
    broken = attempt("4 km = 40 hm\n40 hm = 401 dam\n401 dam = 4010 m\n4000 m = 40000 dm\nAnswer: 40000 dm\n")
    broken.method = "regenerate"
    verify_round(UNITS, PROBLEMS, [broken], window=3)
    assert broken.milestone == 3 and broken.action == "regenerate"
    assert regenerate_prompt(broken) == METRES.prompt + "4 km = 40 hm\n"
    apply_regeneration(broken, "40 hm = 400 dam\n400 dam = 4000 m\n4000 m = 40000 dm\nAnswer: 40000 dm\n", 30, 20)
    assert broken.trace == REFERENCE and broken.regenerations == 1 and broken.fallbacks == 0


def test_tri_falls_back_to_regeneration_when_no_milestone_verifies():
    # Every step after the error carries it forward: nothing later verifies on its own.
    carried = attempt("4 km = 41 hm\n41 hm = 410 dam\n410 dam = 4100 m\n4100 m = 41000 dm\nAnswer: 41000 dm\n")
    verify_round(UNITS, PROBLEMS, [carried], window=3)
    assert (carried.first_failure, carried.milestone, carried.action) == (0, -1, "regenerate")
    assert regenerate_prompt(carried) == METRES.prompt
    apply_regeneration(carried, REFERENCE, 40, 10)
    assert carried.fallbacks == 1 and carried.trace == REFERENCE


@pytest.mark.parametrize("draft", ["", "\n\n", "no steps at all", "Answer:"])
def test_a_draft_without_usable_steps_is_a_verdict_and_a_regeneration(draft):
    bad = attempt(draft)
    verify_round(UNITS, PROBLEMS, [bad], window=3)
    assert not bad.solved and bad.first_failure == 0 and bad.milestone == -1 and bad.action == "regenerate"


def test_summaries_count_generated_and_prompt_tokens_apart():
    right = Attempt("a", "q", solved=True, draft_solved=True, generated_tokens=40, prompt_tokens=8)
    repaired = Attempt("b", "q", solved=True, generated_tokens=40 + 12, prompt_tokens=8 + 30, infills=1)
    failed = Attempt("c", "q", solved=False, generated_tokens=40 + 35, prompt_tokens=8 + 20, regenerations=1, fallbacks=1)
    summary = summarise([right, repaired, failed], {"a": 40, "b": 40, "c": 40})
    assert summary.accuracy_before == pytest.approx(1 / 3) and summary.accuracy_after == pytest.approx(2 / 3)
    assert summary.repair_success == pytest.approx(1 / 2)
    assert summary.generated_tokens_per_problem == pytest.approx(167 / 3)
    assert summary.repair_tokens_per_problem == pytest.approx(47 / 3)
    assert summary.prompt_tokens_per_problem == pytest.approx(74 / 3)
    assert summary.generated_tokens_per_solved == pytest.approx(167 / 2)
    assert summary.fallbacks_per_problem == pytest.approx(1 / 3)
    assert math.isinf(summarise([failed], {"c": 40}).generated_tokens_per_solved)
    assert summary.metrics("tri")["tri/accuracy_after"] == pytest.approx(2 / 3)


def scripted(text_for):
    """A `Generate` that writes `text_for(prompt)` and counts one token per character."""
    return lambda prompts: [(text_for(p), len(text_for(p)), len(p)) for p in prompts]


def test_the_loop_spends_fewer_tokens_infilling_than_regenerating_the_same_drafts():
    from workloads.tri.repair import repair_batch

    broken = "4 km = 40 hm\n40 hm = 401 dam\n400 dam = 4000 m\n4000 m = 40000 dm\nAnswer: 40000 dm\n"
    reference_after = REFERENCE.split("\n", 1)[1]  # what the draft model writes after the verified first step
    bridge = "40 hm = 400 dam\n"
    write, infill = scripted(lambda p: reference_after), scripted(lambda p: bridge)
    (tri,) = repair_batch(UNITS, [METRES], window=3, rounds=2, method="tri", write=write, infill=infill, drafts=[broken])
    (regen,) = repair_batch(UNITS, [METRES], window=3, rounds=2, method="regenerate", write=write, infill=infill, drafts=[broken])
    assert tri.solved and regen.solved and not tri.draft_solved
    assert (tri.infills, tri.regenerations, regen.infills, regen.regenerations) == (1, 0, 0, 1)
    assert (tri.generated_tokens, regen.generated_tokens) == (len(bridge), len(reference_after))

    too_long = lambda prompts: [None for _ in prompts]  # noqa: E731  (every prompt over the context)
    (refused,) = repair_batch(UNITS, [METRES], window=3, rounds=2, method="tri", write=too_long, infill=too_long)
    assert refused.too_long == 3 and not refused.solved and refused.generated_tokens == 0


def test_a_step_the_verifier_times_out_on_is_counted_and_repaired_around():
    """Python traces: the sandbox stops a step that loops; it fails, is counted, and TRI infills
    from the verified prefix to the next step that verifies on its own."""
    from workloads.tri.repair import repair_batch
    from workloads.tri.traces import Program

    python = STEP_TASKS["python"]
    program = Program(7, (("*", 3), ("+", 4), ("//", 2)))
    looping = "x0 = 7\nwhile True: pass\nx2 = x1 + 4\nx3 = x2 // 2\nanswer = x3\n"
    write, infill = scripted(lambda p: "unused"), scripted(lambda p: "x1 = x0 * 3\n")
    (attempt,) = repair_batch(python, [program], window=3, rounds=1, method="tri", write=write, infill=infill, drafts=[looping])
    assert attempt.checker_errors == 1 and attempt.infills == 1 and attempt.fallbacks == 0 and attempt.solved
    assert attempt.trace == "".join(step + "\n" for step in python.reference(program))
