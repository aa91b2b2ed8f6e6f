"""Serve app `policy`: any trained controller in the one policy format (`workloads.policies`:
a PPO specialist, a HANDOFF student, a TempoVLA speed policy) behind HTTP.

    POST /act {"policy": "rayworks-ppo-PandaReach-v0",        a registered policy (optional: the app's default)
               "observation": [[floats], ...],                one row per robot (or one row alone)
               "command": {"speed": 1.5}}                     what the policy declares it takes ({} for none)
         -> {"policy": name, "actions": [[...], ...], ...}    (+ what the kind reports: TempoVLA's "speeds",
                                                              and "chunk" for a policy trained with chunks;
                                                              a HANDOFF student's "gate" weights)
    A HANDOFF student takes {"mode": "velocity" | "recovery" | "motion", "velocity": [vx, vy, yaw rate],
    "left_hand": [x, y, z], "right_hand": [...], "torso": [waist yaw, roll, pitch]}: each field given
    overwrites that part of every observation row's command block.
    GET  /healthz -> every loaded policy's specs: observation and action sizes, action mode, command schema

The default policy is the `--checkpoint` given (a `policy.pt` or its directory), else the newest
registered `rayworks-tempovla-policy` if there is one. A request naming another policy gets the
newest registered version of that name, loaded on first use and kept. Rows of the wrong width,
command fields the policy does not declare and values outside its trained range are refused
with the field named; so is an unknown policy. Start it with `rayworks serve policy`.
"""

# No `from __future__ import annotations`: FastAPI must see the real request model type.
import logging
import threading
from typing import Annotated, Any, Optional, Union

import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from serving.http import error_response, json_api
from workloads import tracking

logger = logging.getLogger("ray.serve")

DEFAULT_REGISTERED = "rayworks-tempovla-policy"
MAX_ROWS = 256
DEFAULT = "default"  # the name the --checkpoint policy answers to when it has no registered one

api = json_api("rayworks policy")

Row = Annotated[list[float], Field(min_length=1, max_length=16384)]


class ActRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Optional[Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,200}$")]] = None
    observation: Union[Annotated[list[Row], Field(min_length=1, max_length=MAX_ROWS)], Row]
    command: dict[str, Any] = Field(default_factory=dict)


def load(source: str) -> tuple:
    """(policy, specs) of a `policy.pt`. Defined above the deployment: Serve serialises the class
    where it is decorated, with the module names that exist by then."""
    from workloads.policies import load_policy

    return load_policy(source)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
@serve.ingress(api)
class PolicyServer:
    def __init__(self, default_source: Optional[str], default_name: str, tracking_uri: str):
        import torch

        torch.set_num_threads(1)
        self.tracking_uri, self.default = tracking_uri, default_name if default_source else None
        self.policies: dict[str, tuple] = {}  # name -> (policy, specs, source)
        self.loading = threading.Lock()
        if default_source:
            self.policies[default_name] = (*load(default_source), default_source)

    def policy(self, name: Optional[str]):
        """(name, policy, specs), or the error response naming what is missing."""
        name = name or self.default
        if name is None:
            return error_response(422, ["policy: name a registered policy (this app has no default: it was started "
                                        "without --checkpoint and no rayworks-tempovla-policy is registered)"])
        with self.loading:
            if name not in self.policies:
                source = tracking.newest_registered_model(name, self.tracking_uri)
                if source is None:
                    return error_response(404, [f"policy: no policy {name!r} here or in the MLflow registry "
                                                f"(loaded: {', '.join(self.policies) or 'none'})"])
                try:
                    self.policies[name] = (*load(str(source)), str(source))
                except ValueError as exc:  # a registered model that is not a policy
                    return error_response(422, [f"policy: {exc}"])
        policy, specs, _ = self.policies[name]
        return name, policy, specs

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "default": self.default,
                "policies": {name: {"source": source, **specs} for name, (_, specs, source) in self.policies.items()}}

    # The body is parsed and the reply encoded by hand: at a robot batch's size (64 x 115 floats)
    # FastAPI's json.loads-then-validate and its jsonable_encoder cost ~3.5 ms a request, pydantic's
    # validate_json and orjson ~0.5 ms. The schema is still ActRequest's, in /docs too.
    @api.post("/act", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": ActRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
    async def act(self, http: Request):
        try:
            request = ActRequest.model_validate_json(await http.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        return await run_in_threadpool(self._act, request)

    def _act(self, request: ActRequest):
        from workloads.policies import CommandError, act

        found = self.policy(request.policy)
        if not isinstance(found, tuple):
            return found
        name, policy, specs = found
        one_row = not isinstance(request.observation[0], list)
        rows = [request.observation] if one_row else request.observation
        try:
            reply = act(policy, specs, rows, request.command)
        except CommandError as exc:
            return error_response(422, [p.replace("observation[0]", "observation") if one_row else p for p in exc.problems])
        out = {key: np.ascontiguousarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
               for key, value in reply.items()}
        if one_row:
            out = {key: value[0] for key, value in out.items()}
        return Response(orjson.dumps({"policy": name, **out}, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def build_app(args: dict | None = None):
    """Application builder for `serve run serving.policy:build_app checkpoint=...`."""
    args = dict(args or {})
    unknown = set(args) - {"checkpoint", "tracking_uri"}
    if unknown:
        raise ValueError(f"policy app: unknown argument(s) {sorted(unknown)}; known: checkpoint, tracking_uri")
    uri = args.get("tracking_uri") or tracking.tracking_uri()
    source, name = args.get("checkpoint"), DEFAULT
    if not source:
        newest = tracking.newest_registered_model(DEFAULT_REGISTERED, uri)
        source, name = (str(newest), DEFAULT_REGISTERED) if newest is not None else (None, DEFAULT)
    if source:
        load(source)  # a file that is not a policy is a clear error here, not a failed replica
    return PolicyServer.bind(source, name, uri)
