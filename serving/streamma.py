"""Serve app `streamma`: streaming multi-agent reasoning behind HTTP, as server-sent events.

    POST /solve {"task": "units", "problem": "4 km>hm>dam", "protocol": "stream" | "serial" | "single",
                 "shape": "chain" | "tree" | "graph", "depth": 1..6, "width": 1..3}
         -> text/event-stream, one `data: <json>` event each:
            {"event": "start", "run_id", "agents": [{"name", "role", "upstream"}]}
            {"event": "step", "agent", "index", "text", "truncated", "created"}   as each agent writes each step
            {"event": "final", "steps", "answer_correct", "latency_s", "first_final_token_s",
             "generated_tokens", "lost", "dead"}
            then `data: [DONE]`
    GET  /runs/{run_id}   a finished or abandoned run's agents: steps written, ended, cancelled
    GET  /healthz

`problem` is the problem's key as the task writes it (units: "4 km>hm>dam"; arithmetic:
"7+5-3"; python: "7; *3; +4"). The agents are one actor per agent name of the largest
topologies (a solver, checkers 1..5 and a merger), started once with the role models: the
directories given, else the newest `rayworks-streamma-solver` / `-checker` registered in MLflow
(`rayworks run streamma` registers both). A client that disconnects mid-stream cancels the run:
every agent stops writing, mid-step included. Start it with `rayworks serve streamma`.
"""

# No `from __future__ import annotations`: FastAPI must see the real request model type.
import asyncio
import collections
import contextvars
import json
import logging
import time
import uuid
from typing import Annotated, Literal

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from ray import serve

from serving.http import Utf8Str, error_response, given_or_registered, json_api
from workloads import tracking

logger = logging.getLogger("ray.serve")

REGISTERED = {"solver": "rayworks-streamma-solver", "checker": "rayworks-streamma-checker"}
MAX_DEPTH, MAX_WIDTH = 6, 3
RUNS_KEPT = 256  # abandoned and finished runs whose record `GET /runs/{id}` still answers

api = json_api("rayworks streamma")


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["units", "arithmetic", "python"]
    problem: Annotated[Utf8Str, Field(min_length=1, max_length=256)]
    protocol: Literal["stream", "serial", "single"] = "stream"
    shape: Literal["chain", "tree", "graph"] = "chain"
    depth: Annotated[StrictInt, Field(ge=1, le=MAX_DEPTH)] = 3
    width: Annotated[StrictInt, Field(ge=1, le=MAX_WIDTH)] = 2


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16)
@serve.ingress(api)
class StreamingAgents:
    def __init__(self, solver: str, checker: str, max_step_tokens: int, max_steps: int):
        import ray

        from actors.streamma import Agent

        self.sources = {"solver": solver, "checker": checker}
        names = [("solver", "solver"), *((f"checker{i}", "checker") for i in range(1, MAX_DEPTH)), ("merger", "checker")]
        self.agents = {name: Agent.remote(name, self.sources[role], max_step_tokens, max_steps) for name, role in names}
        ray.get([agent.ping.remote() for agent in self.agents.values()])  # every model loaded before the first request
        self.runs: collections.OrderedDict[str, dict] = collections.OrderedDict()

    def remember(self, run_id: str, record: dict) -> None:
        self.runs[run_id] = record
        while len(self.runs) > RUNS_KEPT:
            self.runs.popitem(last=False)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", **self.sources, "agents": sorted(self.agents)}

    @api.get("/runs/{run_id}")
    async def run_record(self, run_id: str):
        if run_id not in self.runs:
            return error_response(404, [f"run_id: no run {run_id!r} (only the last {RUNS_KEPT} are kept)"])
        return self.runs[run_id]

    @api.post("/solve")
    async def solve(self, request: SolveRequest):
        from actors.streamma import topology_for
        from workloads.streamma.topology import TopologyConfig, build_topology
        from workloads.tri.traces import STEP_TASKS

        task = STEP_TASKS[request.task]
        try:
            problem = task.parse(request.problem)
        except ValueError as exc:
            return error_response(422, [str(exc)])
        topology = topology_for(request.protocol, build_topology(TopologyConfig(shape=request.shape, depth=request.depth,
                                                                                width=request.width)))
        run_id = uuid.uuid4().hex
        return StreamingResponse(self.events(run_id, task, problem, topology, request.protocol), media_type="text/event-stream")

    async def events(self, run_id: str, task, problem, topology, protocol: str):
        """Start every agent, relay each agent's steps as they come, then the final answer. A
        disconnected client cancels this generator: the `finally` stops the agents."""
        import ray

        from workloads.streamma.agents import score_traces

        began, finished = time.time(), False
        queue: asyncio.Queue = asyncio.Queue()

        async def relay(name: str) -> None:
            try:
                async for ref in self.agents[name].follow.remote(run_id):
                    await queue.put(("step", name, await ref))
            except ray.exceptions.RayError as exc:
                await queue.put(("dead", name, type(exc).__name__))
            finally:
                await queue.put(("ended", name, None))

        relays = []
        try:
            await asyncio.gather(*(self.agents[spec.name].start.remote(run_id, problem.prompt, [self.agents[u] for u in spec.upstream],
                                                                       list(spec.upstream), protocol, spec.name)
                                   for spec in topology.agents))
            yield event({"event": "start", "run_id": run_id,
                         "agents": [{"name": a.name, "role": a.role, "upstream": a.upstream} for a in topology.agents]})
            relays = [asyncio.get_running_loop().create_task(relay(spec.name)) for spec in topology.agents]
            running, dead = len(relays), []
            while running:
                kind, name, payload = await queue.get()
                if kind == "step":
                    yield event({"event": "step", "agent": name, "index": payload["index"], "text": payload["text"],
                                 "truncated": payload["truncated"], "created": payload["created"]})
                elif kind == "dead":
                    dead.append(name)
                else:
                    running -= 1
            statuses = {}
            for spec in topology.agents:
                if spec.name not in dead:
                    statuses[spec.name] = await self.agents[spec.name].status.remote(run_id)
            sink = statuses.get(topology.sink.name)
            steps = [s["text"] for s in sink["steps"]] if sink else []
            (correct,), _ = score_traces(task, [problem], [steps])
            final = {"event": "final", "steps": steps, "answer_correct": bool(correct),
                     "latency_s": (sink["finished"] - began) if sink else None,
                     "first_final_token_s": (sink["first_token"] - began) if sink and sink["first_token"] else None,
                     "generated_tokens": sum(st["generated_tokens"] for st in statuses.values()),
                     "lost": [dict(lost, reader=n) for n, st in statuses.items() for lost in st["lost"]], "dead": dead}
            finished = True
            yield event(final)
            yield "data: [DONE]\n\n"
        finally:
            for task_ in relays:
                task_.cancel()
            # Not awaited here: a cancelled generator may not get to await; the record is kept for GET /runs/{id}.
            # A fresh context: calls made in the request's context are its children, and Ray cancels a
            # disconnected request's children with it (the agents' cancel and status included).
            asyncio.get_running_loop().create_task(self.close(run_id, topology, cancelled=not finished),
                                                   context=contextvars.Context())

    async def close(self, run_id: str, topology, cancelled: bool) -> None:
        import ray

        record = {"run_id": run_id, "cancelled": cancelled, "agents": {}}
        for spec in topology.agents:
            agent = self.agents[spec.name]
            try:
                if cancelled:
                    await agent.cancel.remote(run_id)
                status = await agent.status.remote(run_id, wait=True)
                record["agents"][spec.name] = {"steps": len(status["steps"]), "ended": status["ended"],
                                               "cancelled": status["cancelled"], "lost": status["lost"]}
                await agent.forget.remote(run_id)
            except ray.exceptions.RayError as exc:
                record["agents"][spec.name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        self.remember(run_id, record)


def build_app(args: dict | None = None):
    """Application builder for `serve run serving.streamma:build_app solver=... checker=...`."""
    args = dict(args or {})
    known = {"solver", "checker", "tracking_uri", "max_step_tokens", "max_steps"}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"streamma app: unknown argument(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    uri = args.get("tracking_uri") or tracking.tracking_uri()
    # Resolved here, before any replica starts: a missing model is a clear error, not a failed replica.
    return StreamingAgents.bind(given_or_registered(args.get("solver"), REGISTERED["solver"], uri, "streamma"),
                                given_or_registered(args.get("checker"), REGISTERED["checker"], uri, "streamma"),
                                int(args.get("max_step_tokens", 32)), int(args.get("max_steps", 8)))
