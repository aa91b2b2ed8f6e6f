"""TRI's data layer: step-verified traces (each step judged on its own, so a later step verifies
after an error), the PSM layout with its sentinel tokens, the (Q, P, S, M) quadruples and their
`datasets` schema, the verifier's bridge labels, and the step verifier as a Ray actor."""

import pytest
import torch

from workloads.arithmetic import Problem
from workloads.config import ConfigError, load_config
from workloads.lm import tiny_lm
from workloads.lm.infilling import BRIDGE, MILESTONE, PREMISE, add_infilling_tokens, tokenize_infilling
from workloads.lm.tiny import TinyLMConfig
from workloads.sft import IGNORE_INDEX
from workloads.tri.quadruples import FEATURES, bridge_reaches, quadruple_dataset, quadruples
from workloads.tri.traces import STEP_TASKS, Conversion, Program, TraceConfig, verify_trace

ARITHMETIC, UNITS, PYTHON = STEP_TASKS["arithmetic"], STEP_TASKS["units"], STEP_TASKS["python"]
PROGRAM = Program(7, (("*", 3), ("+", 4), ("//", 2), ("%", 5)))  # 21, 25, 12, 2
CHAIN = Problem((7, 5, 3, 4, 2), ("+", "-", "+", "-"))  # 7+5=12, 12-3=9, 9+4=13, 13-2=11
SMALL = TinyLMConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


def test_a_later_step_verifies_after_an_earlier_error():
    verdict = verify_trace(ARITHMETIC, CHAIN, "7+5=12\n12-3=8\n9+4=13\n13-2=11\nAnswer: 11\n")
    assert verdict.verified == [True, False, True, True, True] and verdict.first_failure == 1 and not verdict.solved
    assert verify_trace(ARITHMETIC, CHAIN, "7+5=12\n12-3=9\n9+4=13\n13-2=11\nAnswer: 11\n").solved
    assert verify_trace(ARITHMETIC, CHAIN, "5+7=12\n12-3=9\n4+9=13\n13-2=11\nAnswer: 11\n").solved  # + commutes
    short = verify_trace(ARITHMETIC, CHAIN, "7+5=12\n12-3=9\n")
    assert short.verified == [True, True] and short.first_failure == 2 and not short.solved
    assert verify_trace(ARITHMETIC, CHAIN, "").first_failure == 0
    extra = verify_trace(ARITHMETIC, CHAIN, "7+5=12\n12-3=9\n9+4=13\n13-2=11\nAnswer: 11\nAnswer: 11\n")
    assert extra.verified[-1] is False and not extra.solved


def test_unit_conversions_are_exact_and_judged_step_by_step():
    weeks = Conversion(3, ("wk", "d", "h", "min"), (7, 24, 60))
    assert UNITS.reference(weeks) == ["3 wk = 21 d", "21 d = 504 h", "504 h = 30240 min", "Answer: 30240 min"]
    verdict = verify_trace(UNITS, weeks, "3 wk = 20 d\n21 d = 504  h\n504 h = 30240 min\nAnswer: 30240 min\n")
    assert verdict.verified == [False, True, True, True] and verdict.first_failure == 0
    assert weeks.prompt == "Q: convert 3 wk to min\n"


def test_python_steps_run_in_the_sandbox_each_after_the_references_steps_before_it():
    assert PYTHON.reference(PROGRAM) == ["x0 = 7", "x1 = x0 * 3", "x2 = x1 + 4", "x3 = x2 // 2", "x4 = x3 % 5", "answer = x4"]
    assert PROGRAM.prompt == "Q: python x0 = 7; x1: *3; x2: +4; x3: //2; x4: %5\n" and PROGRAM.values() == [7, 21, 25, 12, 2]
    assert verify_trace(PYTHON, PROGRAM, "\n".join(PYTHON.reference(PROGRAM))).solved
    # x1 is wrong; x2 = x1 + 4 runs after the reference's x1 = 21 and verifies on its own; a
    # step may state the value instead of computing it, or import (the sandbox holds it);
    # answer = x3 leaves the wrong value
    verdict = verify_trace(PYTHON, PROGRAM, "x0 = 7\nx1 = x0 * 4\nx2 = x1 + 4\nx3 = 12\nimport os; x4 = 2\nanswer = x3")
    assert verdict.verified == [True, False, True, True, True, False] and verdict.first_failure == 1
    assert verdict.checker_errors == 0 and not verdict.solved
    assert verify_trace(PYTHON, PROGRAM, "x0 = 7\nx1 = x0 * 3\nx2 = x1 + 4\nx3 = x2 // 2\nx4 = x3 % 5\nanswer = x4\nx5 = 1").verified[-1] is False
    for bad in ("x0 = 7\nx1 = x0 *", "x0 = 7\nx1 = y * 3", "x0 = 7\nx9 = 21"):  # syntax, name and wrong-variable errors
        assert verify_trace(PYTHON, PROGRAM, bad).verified == [True, False]


def test_a_step_the_sandbox_stops_fails_and_is_counted_as_a_checker_error():
    verdict = verify_trace(PYTHON, PROGRAM, "x0 = 7\nwhile True: pass\nx2 = x1 + 4")
    assert verdict.verified == [True, False, True] and verdict.checker_errors == 1 and verdict.first_failure == 1


@pytest.mark.parametrize("task", ["arithmetic", "units", "python"])
def test_default_traces_are_long_distinct_and_verify(task):
    config = load_config(TraceConfig, None, [f"task={task}", "num_train=200", "num_eval=50"])
    train, held_out = STEP_TASKS[task].splits(config, seed=0)
    assert len(train) == 200 and len(held_out) == 50 and not {p.key for p in train} & {p.key for p in held_out}
    for problem in train + held_out:
        reference = STEP_TASKS[task].reference(problem)
        assert len(reference) >= 5  # at least 4 steps and the answer line
        assert verify_trace(STEP_TASKS[task], problem, "\n".join(reference)).solved


def test_quadruples_cut_every_verified_gap_and_keep_the_schema():
    rows = quadruples("arithmetic", ARITHMETIC, [CHAIN], max_bridge=2)
    # 5 steps: cuts (i, j) with j - i in {1, 2}: 4 + 3
    assert len(rows) == 7
    first = next(r for r in rows if r["premise_steps"] == 0 and r["bridge_steps"] == 2)
    assert first == {"task": "arithmetic", "problem": "7+5-3+4-2", "question": "Q: 7+5-3+4-2\n", "premise": "",
                     "milestone": "9+4=13", "bridge": "7+5=12\n12-3=9\n", "premise_steps": 0, "bridge_steps": 2}
    last = next(r for r in rows if r["premise_steps"] == 3 and r["bridge_steps"] == 1)
    assert last["premise"] == "7+5=12\n12-3=9\n9+4=13\n" and last["bridge"] == "13-2=11\n" and last["milestone"] == "Answer: 11"
    dataset = quadruple_dataset(rows)
    assert len(dataset) == 7 and {name: str(f.dtype) for name, f in dataset.features.items()} == FEATURES
    assert dataset[0] == rows[0]


def test_the_psm_layout_adds_three_special_tokens_and_trains_on_the_bridge_only():
    model, tokenizer = tiny_lm(SMALL, seed=0)
    vocabulary = len(tokenizer)
    ids = add_infilling_tokens(model, tokenizer)
    assert ids == [vocabulary, vocabulary + 1, vocabulary + 2] and add_infilling_tokens(model, tokenizer) == ids  # idempotent
    assert model.get_input_embeddings().num_embeddings == vocabulary + 3
    assert tokenizer.encode(f"{PREMISE}{MILESTONE}{BRIDGE}", add_special_tokens=False) == ids
    examples = tokenize_infilling(tokenizer, ["Q: 7+5-3\n"], ["7+5=12\n"], ["Answer: 9"], ["12-3=9\n"])
    target = tokenizer.encode("12-3=9\n", add_special_tokens=False) + [tokenizer.eos_token_id]
    labels = examples.labels[0][examples.labels[0] != IGNORE_INDEX].tolist()
    assert labels == target
    ids_row = examples.input_ids[0].tolist()
    assert ids_row.index(ids[2]) == len(ids_row) - len(target) - 1  # the bridge starts right after its sentinel
    with torch.no_grad():  # the resized model reads the new tokens
        assert model(input_ids=examples.input_ids).logits.shape[-1] == vocabulary + 3
    plain, plain_tokenizer = tiny_lm(SMALL, seed=0)
    with pytest.raises(ValueError, match="add_infilling_tokens"):
        tokenize_infilling(plain_tokenizer, ["q"], [""], ["s"], ["m"])


@pytest.mark.parametrize("bridge, category", [("12-3=9\n", ""), ("", "malformed"), ("12-3=8\n", "wrong step"),
                                              ("12-3=9\n9+4=13\n", "over length")])
def test_the_verifier_labels_bridges_with_a_failure_category(bridge, category):
    ok, why = bridge_reaches(ARITHMETIC, CHAIN, "7+5=12\n", bridge, "9+4=13")
    assert (ok, why) == (category == "", category)


def test_a_bridge_that_stops_short_misses_the_milestone():
    assert bridge_reaches(ARITHMETIC, CHAIN, "", "7+5=12\n", "9+4=13") == (False, "misses milestone")


def test_a_bad_trace_config_names_its_field():
    with pytest.raises(ConfigError, match="task"):
        load_config(TraceConfig, None, ["task=lean"])
    with pytest.raises(ConfigError, match="min_steps"):
        load_config(TraceConfig, None, ["task=units", "min_steps=7", "max_steps=8"])


@pytest.mark.parametrize("methods", ["", "tri,tri", "tri,beam"])
def test_bad_repair_methods_name_the_field(methods):
    from pipelines.tri import Config

    with pytest.raises(ConfigError, match="repair.methods"):
        load_config(Config, None, [f"repair.methods={methods}"])


def test_the_step_verifier_actor_finds_the_first_failing_step(local_ray):
    import ray

    from actors.tri import StepVerifier

    verifier = StepVerifier.remote()
    verdict = ray.get(verifier.verify.remote("arithmetic", CHAIN, "7+5=12\n12-3=8\n9+4=13\n"))
    assert verdict["first_failure"] == 1 and verdict["verified"] == [True, False, True] and not verdict["solved"]
    with pytest.raises(ray.exceptions.RayTaskError, match="task: expected one of"):
        ray.get(verifier.verify.remote("lean", CHAIN, ""))


def test_problems_parse_back_from_their_keys_and_bad_keys_name_the_problem():
    config = TraceConfig(task="units", min_steps=3, max_steps=5, num_train=50, num_eval=10)
    for name, task_config in (("units", config), ("arithmetic", TraceConfig(task="arithmetic", num_train=50, num_eval=10)),
                              ("python", TraceConfig(task="python", num_train=50, num_eval=10))):
        task = STEP_TASKS[name]
        train, _ = task.splits(task_config, 0)
        assert all(task.parse(p.key) == p for p in train)
    assert UNITS.parse("3 wk>d>h").factors == (7, 24)
    for bad in ("4 km>g", "4 km", "km>m", "4 km>>m"):
        with pytest.raises(ValueError, match="problem"):
            UNITS.parse(bad)
    with pytest.raises(ValueError, match="problem"):
        ARITHMETIC.parse("7+")
    assert PYTHON.parse("7; *3; +4; //2; %5") == PROGRAM
    for bad in ("7 * 3", "7; **3", "x; +1"):
        with pytest.raises(ValueError, match="problem"):
            PYTHON.parse(bad)
