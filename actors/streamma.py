"""StreamMA's agents: one async Ray actor per agent, holding a model (a local causal LM or an
OpenAI-compatible streaming endpoint) and writing reasoning steps one at a time.

Steps move between agents by actor-to-actor calls, not polling: a reader awaits
`upstream.steps_from(run, start, at_least)`, which returns as soon as the upstream has written
that many steps (an `asyncio.Condition` wakes it) with every step it has by then. Fan-out needs
nothing more: every reader calls on its own, so a Tree or Graph needs no relay. The driver and
the Serve app follow an agent's steps as they appear through `follow`, a streaming generator.

Protocols (`PROTOCOLS`): `stream` writes step k once every upstream has written k steps (or
ended), conditioned on all upstream steps received so far; `serial` waits for each upstream's
whole chain before its first step; `single` is the solver alone. An upstream that dies is
recorded (which agent, how many of its steps arrived) and its stream counts as ended for the
reader, which goes on with what it received.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid

import ray

from workloads.streamma.agents import EndpointStepWriter, Step, StepWriter, agent_prompt, is_final
from workloads.streamma.topology import Topology, single

PROTOCOLS = ("stream", "serial", "single")
EVERYTHING = 1 << 30  # `at_least` that only the end of a stream satisfies


@dataclasses.dataclass
class AgentRun:
    """One agent's part in one run (one problem)."""

    steps: list[Step] = dataclasses.field(default_factory=list)
    ended: bool = False
    cancelled: bool = False
    error: str = ""  # the agent's own failure, if it had one
    lost: list[dict] = dataclasses.field(default_factory=list)  # upstreams that died: {"agent", "received", "error"}
    hops: list[float] = dataclasses.field(default_factory=list)  # seconds from an upstream step's creation to its arrival here
    prompt_tokens: int = 0
    started: float = 0.0
    finished: float = 0.0
    changed: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)

    def status(self) -> dict:
        return {"steps": [dataclasses.asdict(s) for s in self.steps], "ended": self.ended, "cancelled": self.cancelled,
                "error": self.error, "lost": self.lost, "hops": self.hops, "prompt_tokens": self.prompt_tokens,
                "generated_tokens": sum(s.tokens for s in self.steps), "truncated": sum(s.truncated for s in self.steps),
                "started": self.started, "finished": self.finished,
                "first_token": self.steps[0].first_token if self.steps else 0.0}


@ray.remote(num_cpus=0.25)
class Agent:
    def __init__(self, name: str, model: str, max_step_tokens: int, max_steps: int, temperature: float = 0.0,
                 seed: int = 0, endpoint: str = "", fail_after_steps: int = 0, nice: int = 0):
        """`model` is a model directory or hub id, or with `endpoint` the endpoint's model name.
        `nice` lowers the priority of this agent's writing thread (see `launch_agents`).
        `fail_after_steps` > 0 ends this actor's process after that many steps of a run: fault
        injection, for the tests of an agent that dies mid-stream."""
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"
        from concurrent.futures import ThreadPoolExecutor

        import torch

        torch.set_num_threads(1)
        self.name, self.max_steps, self.fail_after_steps = name, max_steps, fail_after_steps
        if endpoint:
            self.writer = EndpointStepWriter(endpoint, model, max_step_tokens, temperature, seed)
        else:
            from workloads.lm import load_lm

            model_, tokenizer = load_lm(model)
            self.writer = StepWriter(model_, tokenizer, max_step_tokens, temperature, seed)
        # One step at a time, on a thread of its own niceness (Linux: niceness is per thread); the
        # event loop stays free (and at full priority) to hand steps out.
        self.executor = ThreadPoolExecutor(1, initializer=os.nice, initargs=(min(19, nice),))
        self.runs: dict[str, AgentRun] = {}

    def _run(self, run_id: str) -> AgentRun:
        return self.runs.setdefault(run_id, AgentRun())

    async def start(self, run_id: str, question: str, upstream: list, upstream_names: list[str], protocol: str,
                    name: str = "") -> None:
        """Begin this agent's part of `run_id` (as agent `name`, default its own); returns at once
        (the work continues in the actor). An agent holds no topology: each run says whom it reads."""
        state = self._run(run_id)
        state.started = time.time()
        asyncio.get_running_loop().create_task(
            self._work(state, run_id, question, upstream, upstream_names, protocol, name or self.name))

    async def _work(self, state: AgentRun, run_id: str, question: str, upstream: list, names: list[str], protocol: str,
                    me: str) -> None:
        received: list[list[Step]] = [[] for _ in upstream]
        ended = [False] * len(upstream)

        async def fetch(i: int, at_least: int) -> None:
            if ended[i]:
                return
            try:
                steps, done = await upstream[i].steps_from.remote(run_id, len(received[i]), at_least)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                state.lost.append({"agent": names[i], "received": len(received[i]), "error": type(exc).__name__})
                ended[i] = True
                return
            now = time.time()
            for step in steps:
                received[i].append(Step(**step))
                state.hops.append(now - step["created"])
            ended[i] = ended[i] or done

        # stream: one pump per upstream takes each step as soon as it is written, so a step that
        # exists when this agent needs it is already here (no round trip on the critical path)
        arrived = asyncio.Condition()

        async def pump(i: int) -> None:
            try:
                while not ended[i]:
                    await fetch(i, len(received[i]) + 1)
                    async with arrived:
                        arrived.notify_all()
            except Exception as exc:  # noqa: BLE001 - the reader goes on with what it received, as from a dead upstream
                state.lost.append({"agent": names[i], "received": len(received[i]), "error": type(exc).__name__})
                ended[i] = True
                async with arrived:
                    arrived.notify_all()

        pumps = [asyncio.create_task(pump(i)) for i in range(len(upstream))] if protocol == "stream" else []
        try:
            if protocol == "serial":
                await asyncio.gather(*(fetch(i, EVERYTHING) for i in range(len(upstream))))
            for k in range(self.max_steps):
                if protocol == "stream":
                    async with arrived:
                        await arrived.wait_for(lambda: all(ended[i] or len(received[i]) > k for i in range(len(upstream))))
                if state.cancelled:
                    break
                prompt = agent_prompt(question, [[s.text for s in steps] for steps in received], [s.text for s in state.steps])
                state.prompt_tokens += self.writer.prompt_tokens(prompt)
                step = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.writer.write, prompt, me, k, lambda: state.cancelled)
                if step is None:
                    break
                async with state.changed:
                    state.steps.append(step)
                    state.changed.notify_all()
                if self.fail_after_steps and len(state.steps) >= self.fail_after_steps:
                    os._exit(1)
                if is_final(step.text):
                    break
        except Exception as exc:  # the run reports it; readers see the stream end
            state.error = f"{type(exc).__name__}: {exc}"
        finally:
            for task in pumps:
                task.cancel()
            async with state.changed:
                state.ended, state.finished = True, time.time()
                state.changed.notify_all()

    async def steps_from(self, run_id: str, start: int, at_least: int) -> tuple[list[dict], bool]:
        """Steps `start`.. once this agent has written `at_least` steps or ended (whichever is
        first), and whether it has ended."""
        state = self._run(run_id)
        async with state.changed:
            await state.changed.wait_for(lambda: state.ended or len(state.steps) >= at_least)
            return [dataclasses.asdict(s) for s in state.steps[start:]], state.ended

    async def follow(self, run_id: str):
        """Each step as it is written (a streaming generator), until this agent ends."""
        sent = 0
        while True:
            steps, ended = await self.steps_from(run_id, sent, sent + 1)
            for step in steps:
                yield step
            sent += len(steps)
            if ended and sent == len(self._run(run_id).steps):
                return

    async def status(self, run_id: str, wait: bool = False) -> dict:
        state = self._run(run_id)
        if wait:
            async with state.changed:
                await state.changed.wait_for(lambda: state.ended)
        return state.status()

    async def cancel(self, run_id: str) -> None:
        """Stop writing for `run_id` (mid-step included); readers see the stream end."""
        state = self._run(run_id)
        state.cancelled = True
        if not state.started:  # never started: nothing will end it
            async with state.changed:
                state.ended = True
                state.changed.notify_all()

    async def forget(self, run_id: str) -> None:
        self.runs.pop(run_id, None)

    def ping(self) -> str:
        return self.name


def launch_agents(topology: Topology, models: dict[str, str], max_step_tokens: int, max_steps: int, temperature: float = 0.0,
                  seed: int = 0, endpoint: str = "", fail_after_steps: dict[str, int] | None = None,
                  nice_per_level: int = 0) -> dict:
    """One `Agent` per agent of the topology, holding its role's model (`models[role]`); ready
    when this returns. `nice_per_level` > 0 lowers each agent's writing priority by that many
    nice steps per hop from the question: on a machine whose cores the agents alone share, the
    upstream agents, which every reader waits on, then get the cores first (CFS weights fall
    about 1.25x a step). Off by default: beside other work, the lowered agents also yield to it."""
    (agents,) = launch_cast([topology], models, max_step_tokens, max_steps, temperature, seed, endpoint, fail_after_steps,
                            nice_per_level)
    return agents


def launch_cast(topologies: list[Topology], models: dict[str, str], max_step_tokens: int, max_steps: int,
                temperature: float = 0.0, seed: int = 0, endpoint: str = "", fail_after_steps: dict[str, int] | None = None,
                nice_per_level: int = 0) -> list[dict]:
    """`launch_agents` for several topologies at once, one agents dict each: an agent holds no
    topology (each run says whom it reads), so one actor plays every agent of the same name, role
    and level, and each model loads once."""
    actors: dict[tuple, ray.actor.ActorHandle] = {}
    cast = []
    for topology in topologies:
        levels, agents = topology.levels(), {}
        for spec in topology.agents:
            key = (spec.name, spec.role, levels[spec.name])
            if key not in actors:
                actors[key] = Agent.remote(spec.name, models[spec.role], max_step_tokens, max_steps, temperature, seed, endpoint,
                                           (fail_after_steps or {}).get(spec.name, 0), nice_per_level * levels[spec.name])
            agents[spec.name] = actors[key]
        cast.append(agents)
    ray.get([agent.ping.remote() for agent in actors.values()])
    return cast


def topology_for(protocol: str, topology: Topology) -> Topology:
    return single() if protocol == "single" else topology


def start_run(agents: dict, topology: Topology, protocol: str, question: str, run_id: str | None = None) -> str:
    """Start every agent of the protocol's topology on `question` (`agents` maps each agent's
    name to the actor playing it); returns the run id."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    run_id = run_id or uuid.uuid4().hex
    used = topology_for(protocol, topology)
    ray.get([agents[spec.name].start.remote(run_id, question, [agents[u] for u in spec.upstream], list(spec.upstream), protocol,
                                             spec.name) for spec in used.agents])
    return run_id


def collect_run(agents: dict, topology: Topology, protocol: str, run_id: str, began: float) -> dict:
    """Every agent's record of a finished run (waits for the sink), timings relative to `began`;
    an agent that died is reported as such."""
    used = topology_for(protocol, topology)
    statuses, dead = {}, []
    for spec in used.agents:
        try:
            statuses[spec.name] = ray.get(agents[spec.name].status.remote(run_id, wait=True))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
            dead.append(spec.name)
    for spec in used.agents:
        if spec.name not in dead:
            agents[spec.name].forget.remote(run_id)
    sink = statuses.get(used.sink.name)
    steps = [s["text"] for s in sink["steps"]] if sink else []
    return {"run_id": run_id, "protocol": protocol, "sink": used.sink.name, "steps": steps, "agents": statuses, "dead": dead,
            "lost": [dict(lost, reader=name) for name, st in statuses.items() for lost in st["lost"]],
            "latency": (sink["finished"] - began) if sink else float("nan"),
            "first_final_token": (sink["first_token"] - began) if sink and sink["first_token"] else float("nan"),
            "generated_tokens": sum(st["generated_tokens"] for st in statuses.values()),
            "prompt_tokens": sum(st["prompt_tokens"] for st in statuses.values()),
            "truncated": sum(st["truncated"] for st in statuses.values()),
            "hops": [h for st in statuses.values() for h in st["hops"]]}


def solve(agents: dict, topology: Topology, protocol: str, question: str) -> dict:
    """One problem end to end: start, wait for the sink, collect."""
    began = time.time()
    run_id = start_run(agents, topology, protocol, question)
    return collect_run(agents, topology, protocol, run_id, began)


def solve_many(agents: dict, topology: Topology, protocol: str, questions: list[str], in_flight: int = 1) -> list[dict]:
    """Every question, `in_flight` at a time (1: each run alone, what latency is measured on)."""
    results: list[dict | None] = [None] * len(questions)
    pending: dict[int, tuple[str, float]] = {}
    next_index = 0
    while next_index < len(questions) or pending:
        while next_index < len(questions) and len(pending) < in_flight:
            began = time.time()
            pending[next_index] = (start_run(agents, topology, protocol, questions[next_index]), began)
            next_index += 1
        index = min(pending)  # runs finish in about the order they started
        run_id, began = pending.pop(index)
        results[index] = collect_run(agents, topology, protocol, run_id, began)
    return results
