"""StreamMA's agents as real Ray actors: steps stream downstream as they are written (a reader
writes before its upstream has finished), serial waits for whole chains, fan-out needs no
relay, and a dying agent or an endless step is reported, not hung on."""

from pathlib import Path

import pytest

from actors.streamma import launch_agents, launch_cast, solve
from tests import helpers
from workloads.streamma.topology import chain, check_topology, tree

# enough steps that a reader scheduled late on a loaded machine still starts before its upstream ends
MAX_STEPS, STEP_TOKENS = 12, 12


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory) -> str:
    return helpers.endless_model(Path(tmp_path_factory.mktemp("endless")))


@pytest.fixture(scope="module")
def chain3(local_ray, endless_model):
    topology = check_topology(chain(3))
    return topology, launch_agents(topology, {"solver": endless_model, "checker": endless_model}, STEP_TOKENS, MAX_STEPS)


def created(result: dict, agent: str) -> list[float]:
    return [s["created"] for s in result["agents"][agent]["steps"]]


def first_token(result: dict, agent: str) -> float:
    return result["agents"][agent]["steps"][0]["first_token"]


def test_stream_hands_each_step_on_before_the_upstream_finishes(chain3):
    topology, agents = chain3
    result = solve(agents, topology, "stream", "Q: convert 3 km to mm\n")
    assert [len(created(result, a)) for a in ("solver", "checker1", "checker2")] == [MAX_STEPS] * 3
    assert result["truncated"] == 3 * MAX_STEPS and result["generated_tokens"] == 3 * MAX_STEPS * STEP_TOKENS
    # pipelining: each reader is writing its first step before its upstream has written its last
    # (first tokens, not finished steps: on a loaded machine a reader's step may finish late)
    assert first_token(result, "checker1") < created(result, "solver")[-1]
    assert first_token(result, "checker2") < created(result, "checker1")[-1]
    # a reader's step k never precedes its upstream's step k (it waits for it)
    assert all(c >= s for c, s in zip(created(result, "checker1"), created(result, "solver")))
    assert len(result["hops"]) == 2 * MAX_STEPS and all(0 <= h < 5 for h in result["hops"])
    assert result["lost"] == [] and result["dead"] == [] and 0 < result["first_final_token"] < result["latency"]


def test_serial_waits_for_the_whole_upstream_chain(chain3):
    topology, agents = chain3
    result = solve(agents, topology, "serial", "Q: convert 3 km to mm\n")
    first_tokens = {a: result["agents"][a]["steps"][0]["first_token"] for a in ("checker1", "checker2")}
    assert first_tokens["checker1"] >= created(result, "solver")[-1]
    assert first_tokens["checker2"] >= created(result, "checker1")[-1]
    single = solve(agents, topology, "single", "Q: convert 3 km to mm\n")
    assert list(single["agents"]) == ["solver"] and single["generated_tokens"] == MAX_STEPS * STEP_TOKENS


def test_fan_out_and_merge_without_a_relay(local_ray, endless_model):
    topology, deeper = check_topology(tree(2)), check_topology(chain(3))
    agents, chain_agents = launch_cast([topology, deeper], {"solver": endless_model, "checker": endless_model}, STEP_TOKENS,
                                       MAX_STEPS)
    # one actor plays an agent of the same name, role and level in both; checker2 is at level 1 in
    # the tree and level 2 in the chain: two actors
    assert agents["solver"] is chain_agents["solver"] and agents["checker1"] is chain_agents["checker1"]
    assert agents["checker2"] is not chain_agents["checker2"] and "merger" not in chain_agents
    assert len(solve(chain_agents, deeper, "stream", "Q: convert 3 km to mm\n")["steps"]) == MAX_STEPS
    result = solve(agents, topology, "stream", "Q: convert 3 km to mm\n")
    assert set(result["agents"]) == {"solver", "checker1", "checker2", "merger"} and result["sink"] == "merger"
    assert len(result["steps"]) == MAX_STEPS and result["lost"] == []
    # both branches read every solver step, the merger every step of both branches
    assert len(result["agents"]["merger"]["hops"]) == 2 * MAX_STEPS


def test_an_agent_that_dies_mid_stream_is_reported_and_its_reader_goes_on(local_ray, endless_model):
    topology = check_topology(chain(3))
    agents = launch_agents(topology, {"solver": endless_model, "checker": endless_model}, STEP_TOKENS, MAX_STEPS,
                           fail_after_steps={"checker1": 2})
    result = solve(agents, topology, "stream", "Q: convert 3 km to mm\n")
    assert result["dead"] == ["checker1"]
    (lost,) = result["lost"]
    assert lost["agent"] == "checker1" and lost["reader"] == "checker2" and lost["received"] in (1, 2)
    assert len(result["steps"]) == MAX_STEPS  # checker2 wrote on from what it received
