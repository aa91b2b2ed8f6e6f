"""StreamMA's plain-Python parts: topologies (and the ones refused), the agent prompt layout,
role data, exact scoring, and the step writer's bound on a step that never ends."""

import random

import pytest

from workloads.config import ConfigError, load_config
from workloads.streamma.agents import (
    END_OF_STEP,
    StepWriter,
    agent_prompt,
    checker_rows,
    corrupt_step,
    is_final,
    score_traces,
    solver_rows,
)
from workloads.streamma.topology import AgentSpec, TopologyError, chain, check_topology, graph, tree
from workloads.tri.traces import STEP_TASKS


def test_ready_made_shapes_are_dags_with_one_sink():
    assert [a.name for a in check_topology(chain(4)).agents] == ["solver", "checker1", "checker2", "checker3"]
    assert check_topology(chain(4)).depth == 4 and check_topology(chain(1)).depth == 1
    fan = check_topology(tree(3))
    assert fan.sink.name == "merger" and fan.sink.upstream == ["checker1", "checker2", "checker3"] and fan.depth == 3
    # hops from the question (an agent's scheduling priority follows it)
    assert fan.levels() == {"solver": 0, "checker1": 1, "checker2": 1, "checker3": 1, "merger": 2}
    # graph: each branch also reads its left neighbour, so the longest path runs through every branch
    assert check_topology(graph(3)).depth == 5


@pytest.mark.parametrize("agents, named", [
    ([AgentSpec("solver", "solver"), AgentSpec("a", "checker", ["solver", "b"]), AgentSpec("b", "checker", ["a"])], "'a'"),
    ([AgentSpec("solver", "solver"), AgentSpec("a", "checker", ["solver"]), AgentSpec("b", "checker", ["solver"])], "['a']"),
    ([AgentSpec("solver", "solver"), AgentSpec("a", "checker", ["ghost"])], "'ghost'"),
    ([AgentSpec("solver", "solver", ["solver"])], "'solver'"),
    ([AgentSpec("solver", "solver"), AgentSpec("solver", "checker", ["solver"])], "'solver'"),
])
def test_a_broken_topology_is_refused_naming_the_agent(agents, named):
    with pytest.raises(TopologyError, match=named.replace("[", r"\[").replace("]", r"\]")):
        check_topology(agents)


def test_a_cycle_in_the_config_fails_before_anything_runs(tmp_path):
    from pipelines.streamma import Config

    path = tmp_path / "cycle.yaml"
    path.write_text("topology:\n  shape: custom\n  agents:\n"
                    "    - {name: solver, role: solver}\n"
                    "    - {name: x, role: checker, upstream: [solver, y]}\n"
                    "    - {name: y, role: checker, upstream: [x]}\n")
    with pytest.raises(ConfigError, match=r"agents: .*cycle.*'x'"):
        load_config(Config, str(path), [])
    with pytest.raises(ConfigError, match="train.max_upstreams"):
        load_config(Config, None, ["topology.shape=tree", "topology.width=3"])
    with pytest.raises(ConfigError, match="protocol"):
        load_config(Config, None, ["protocol=relay"])


def test_prompt_layout_labels_upstream_blocks_and_ends_with_the_agents_own_steps():
    prompt = agent_prompt("Q: convert 3 km to hm\n", [["3 km = 30 hm"], ["3 km = 31 hm", "Answer: 31 hm"]], ["3 km = 30 hm"])
    assert prompt == ("Q: convert 3 km to hm\nA> 3 km = 30 hm\nB> 3 km = 31 hm\nB> Answer: 31 hm\n3 km = 30 hm\n")
    assert agent_prompt("Q: x\n", [], []) == "Q: x\n"  # the solver reads the question alone


def test_role_data_checker_targets_are_the_reference_whatever_the_upstream_says():
    reference = ["3 km = 30 hm", "30 hm = 300 dam", "Answer: 300 dam"]
    rng = random.Random(0)
    assert corrupt_step("30 hm = 300 dam", rng) != "30 hm = 300 dam"
    assert corrupt_step("30 hm = 300 dam", rng).startswith("30 hm = ")  # the result changes, not the premise
    rows = [row for _ in range(50) for row in checker_rows("Q: convert 3 km to dam\n", reference, rng, max_upstreams=2)]
    wrong_upstream = 0
    for row in rows:
        own = [line for line in row["prompt"].split("\n")[1:] if line and ">" not in line]
        k = len(own)
        assert own == reference[:k] and row["completion"] == "".join(s + END_OF_STEP for s in reference[k:])
        upstream = [line[3:] for line in row["prompt"].split("\n") if line.startswith(("A> ", "B> "))]
        wrong_upstream += any(step not in reference for step in upstream)
    assert 0.3 * len(rows) < wrong_upstream < len(rows)  # upstreams are often wrong, never always
    (solver,) = solver_rows("Q: convert 3 km to dam\n", reference)
    assert solver["completion"] == "3 km = 30 hm\n30 hm = 300 dam\nAnswer: 300 dam\n"


def test_scoring_is_exact_and_counts_a_missing_step_as_wrong():
    task = STEP_TASKS["units"]
    problem = task.parse("3 km>hm>dam")
    reference = task.reference(problem)
    answers, positions = score_traces(task, [problem] * 4, [
        reference,
        [reference[0], "30 hm = 301 dam", "Answer: 301 dam"],
        [reference[0], "", reference[2]],  # an empty step keeps its place
        reference[:2],
    ])
    assert answers == [True, False, True, False]
    assert positions == [[True, True, True], [True, False, False], [True, False, True], [True, True, False]]
    assert is_final("Answer: 3 m") and is_final("answer = x3") and not is_final("3 km = 30 hm")


def test_a_step_that_never_ends_is_cut_at_max_step_tokens(tmp_path):
    """A model that never writes the end-of-step marker (its final norm zeroed: every logit 0,
    greedy picks token 0) is stopped at the bound, and the step says it was cut."""
    from workloads.lm import TinyLMConfig, tiny_lm

    model, tokenizer = tiny_lm(TinyLMConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64))
    model.model.norm.weight.data.zero_()
    step = StepWriter(model, tokenizer, max_step_tokens=7).write("Q: 1+1\n", "solver", 0)
    assert step.truncated and step.tokens == 7
    assert StepWriter(model, tokenizer, max_step_tokens=7).write("Q: 1+1\n", "solver", 0, should_stop=lambda: True) is None
