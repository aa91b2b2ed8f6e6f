"""Agent topologies: a DAG of agents, each with a role and the agents it reads from.

The sink (the one agent nobody reads from) writes the final answer. Ready-made shapes
(`SHAPES`): `chain` (solver -> checker -> ... of a given depth), `tree` (a solver fans out to
`width` checkers, a merging checker reads them all) and `graph` (a tree whose branches also
read each other in order, so a branch sees its left neighbour's corrections). `custom` takes the
agents from the config. A cycle, a reference to an agent that does not exist, an agent whose
output reaches no one, or a second sink is refused with the agent named.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from workloads.config import ConfigError, require


@dataclasses.dataclass
class AgentSpec:
    name: str
    role: str = "checker"  # which trained model the agent holds: solver (reads the question only) or checker
    upstream: list[str] = dataclasses.field(default_factory=list)  # agents whose steps this one reads, in order


@dataclasses.dataclass
class TopologyConfig:
    """Which agents exist and who reads whom."""

    shape: str = "chain"  # chain, tree, graph or custom
    depth: int = 3  # chain: agents in the chain (1 = the solver alone)
    width: int = 2  # tree and graph: checkers between the solver and the merging checker
    agents: list[AgentSpec] = dataclasses.field(default_factory=list)  # custom: the agents and their upstreams

    section: ClassVar[str] = "topology"

    def validate(self) -> None:
        require(self.shape in SHAPES, "shape", f"expected one of {', '.join(SHAPES)}, got {self.shape!r}")
        require(self.depth >= 1, "depth", "must be >= 1")
        require(self.width >= 1, "width", "must be >= 1")
        require(self.shape != "custom" or self.agents, "agents", "shape custom needs the agents listed")
        try:
            build_topology(self)
        except TopologyError as exc:
            raise ConfigError(f"agents: {exc}") from None


class TopologyError(ValueError):
    """The agent graph is not a DAG with one sink; the message names the agent."""


@dataclasses.dataclass(frozen=True)
class Topology:
    agents: tuple[AgentSpec, ...]  # in an order where every agent comes after its upstreams

    @property
    def sink(self) -> AgentSpec:
        return self.agents[-1]

    @property
    def depth(self) -> int:
        """Agents on the longest path to the sink: what serial latency grows with."""
        return self.levels()[self.sink.name] + 1

    def levels(self) -> dict[str, int]:
        """Each agent's hops from the question: 0 for agents that read no one, else 1 + its deepest upstream's."""
        level: dict[str, int] = {}
        for agent in self.agents:
            level[agent.name] = 1 + max((level[u] for u in agent.upstream), default=-1)
        return level

    def by_name(self) -> dict[str, AgentSpec]:
        return {agent.name: agent for agent in self.agents}


def check_topology(agents: list[AgentSpec]) -> Topology:
    """The agents in dependency order, or TopologyError naming the agent that breaks the DAG."""
    names = [agent.name for agent in agents]
    for agent in agents:
        if not agent.name:
            raise TopologyError("an agent has no name")
        if names.count(agent.name) > 1:
            raise TopologyError(f"agent {agent.name!r} is defined twice")
        for upstream in agent.upstream:
            if upstream not in names:
                raise TopologyError(f"agent {agent.name!r} reads from {upstream!r}, which is not an agent")
        if len(set(agent.upstream)) != len(agent.upstream):
            raise TopologyError(f"agent {agent.name!r} lists an upstream twice")
        if agent.role not in ROLES:
            raise TopologyError(f"agent {agent.name!r} has role {agent.role!r}; expected one of {', '.join(ROLES)}")
        if (agent.role == "solver") != (not agent.upstream):
            raise TopologyError(f"agent {agent.name!r}: a solver reads no upstream and every other role reads one or more")
    readers = {name: [a.name for a in agents if name in a.upstream] for name in names}
    sinks = [name for name in names if not readers[name]]
    if len(sinks) > 1:
        raise TopologyError(f"agents {sinks[:-1]} feed no one (dangling); only the sink {sinks[-1]!r} may")
    ordered, placed, pending = [], set(), list(agents)
    while pending:  # Kahn's algorithm: place every agent whose upstreams are placed
        ready = [a for a in pending if set(a.upstream) <= placed]
        if not ready:
            raise TopologyError(f"agents {sorted(a.name for a in pending)} form a cycle (agent {pending[0].name!r} "
                                f"waits on {sorted(set(pending[0].upstream) - placed)})")
        for agent in ready:
            ordered.append(agent)
            placed.add(agent.name)
            pending.remove(agent)
    if not sinks:  # only reachable with a cycle, which the loop above reports
        raise TopologyError("no sink: every agent is read by another")
    sink = next(a for a in ordered if a.name == sinks[0])
    ordered.remove(sink)
    return Topology(tuple([*ordered, sink]))


def chain(depth: int) -> list[AgentSpec]:
    agents = [AgentSpec("solver", "solver")]
    for i in range(1, depth):
        agents.append(AgentSpec(f"checker{i}", "checker", [agents[-1].name]))
    return agents


def tree(width: int) -> list[AgentSpec]:
    branches = [AgentSpec(f"checker{i + 1}", "checker", ["solver"]) for i in range(width)]
    return [AgentSpec("solver", "solver"), *branches, AgentSpec("merger", "checker", [b.name for b in branches])]


def graph(width: int) -> list[AgentSpec]:
    branches = [AgentSpec(f"checker{i + 1}", "checker", ["solver"] + ([f"checker{i}"] if i else [])) for i in range(width)]
    return [AgentSpec("solver", "solver"), *branches, AgentSpec("merger", "checker", [b.name for b in branches])]


SHAPES = {"chain": lambda c: chain(c.depth), "tree": lambda c: tree(c.width), "graph": lambda c: graph(c.width),
          "custom": lambda c: [AgentSpec(a.name, a.role, list(a.upstream)) for a in c.agents]}
ROLES = ("solver", "checker")


def build_topology(config: TopologyConfig) -> Topology:
    return check_topology(SHAPES[config.shape](config))


def single() -> Topology:
    """The `single` protocol's topology: the solver alone."""
    return check_topology(chain(1))
