"""Serve app `policy`: a trained TempoVLA policy behind HTTP, the speed part of its command.

    POST /act {"observations": [[38 floats], ...], "speed": 1.5}
           or {"observations": [...], "schedule": {"fast": 2.0, "slow": 0.5, "near": 0.05}}
         -> {"actions": [[ee_dx, ee_dy, ee_dz, gripper], ...], "speeds": [...]}
            (+ "chunk": each row's whole predicted chunk, for a policy trained with chunks)
    GET  /healthz -> the policy's specs (observation size, action names and mode, speed range, ...)

Observations are PandaPickCube's in the policy's action mode (`action_mode` in /healthz: ee, or
joint_velocity), one row per robot; actions are what that environment steps with (motion clipped to the bound, gripper +1 open /
-1 closed). A speed outside the range the policy was trained on is refused by name; a policy
trained without VSTA (`augment=none`) has its motion scaled by the speed, as in evaluation.
The policy is the `--checkpoint` given (a `policy.pt` or its directory), else the newest
registered `rayworks-tempovla-policy`. Start it with `rayworks serve policy`.
"""

# No `from __future__ import annotations`: FastAPI must see the real request model type.
import logging
from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from serving.http import error_response, given_or_registered, json_api
from workloads import tracking

logger = logging.getLogger("ray.serve")

REGISTERED = "rayworks-tempovla-policy"
MAX_ROWS = 256

api = json_api("rayworks policy")


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fast: Annotated[float, Field(gt=0, le=10)]
    slow: Annotated[float, Field(gt=0, le=10)]
    near: Annotated[float, Field(gt=0, le=1)] = 0.05


class ActRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    observations: Annotated[list[list[float]], Field(min_length=1, max_length=MAX_ROWS)]
    speed: Optional[Annotated[float, Field(gt=0, le=10)]] = None
    schedule: Optional[Schedule] = None


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
@serve.ingress(api)
class PolicyServer:
    def __init__(self, source: str):
        import torch

        from workloads.tempovla.policy import load_policy_artifact

        torch.set_num_threads(1)
        self.source = source
        self.policy, self.specs = load_policy_artifact(source)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "source": self.source, **self.specs}

    @api.post("/act")
    def act(self, request: ActRequest):
        import torch

        from workloads.tempovla.policy import SpeedActor, SpeedCommand

        low, high = self.specs["speed_range"]
        width = self.specs["observation_dim"]
        problems = [f"observations[{i}]: expected {width} numbers, got {len(row)}"
                    for i, row in enumerate(request.observations) if len(row) != width][:5]
        if (request.speed is None) == (request.schedule is None):
            problems.append("speed: give either speed or schedule")
        commanded = [("speed", request.speed)] if request.speed is not None else \
            [("schedule.fast", request.schedule.fast), ("schedule.slow", request.schedule.slow)] if request.schedule else []
        problems += [f"{name}: {value} is outside the trained range [{low}, {high}]" for name, value in commanded
                     if not low <= value <= high]
        if problems:
            return error_response(422, problems)
        scale = self.specs["augment"] == "none"
        if request.speed is not None:
            command = SpeedCommand(speed=request.speed, scale_actions=scale)
        else:
            command = SpeedCommand(fast=request.schedule.fast, slow=request.schedule.slow, near=request.schedule.near,
                                   scale_actions=scale)
        obs = torch.tensor(request.observations, dtype=torch.float32)
        chunk = SpeedActor(self.policy, command, inputs=self.specs.get("inputs", "state")).predict(obs)
        reply = {"actions": chunk[:, 0].tolist(), "speeds": command.speeds(obs).tolist()}
        if self.specs.get("chunk", 1) > 1:  # action chunking: the whole predicted chunk too, to be played in order
            reply["chunk"] = chunk.tolist()
        return reply


def build_app(args: dict | None = None):
    """Application builder for `serve run serving.policy:build_app checkpoint=...`."""
    args = dict(args or {})
    unknown = set(args) - {"checkpoint", "tracking_uri"}
    if unknown:
        raise ValueError(f"policy app: unknown argument(s) {sorted(unknown)}; known: checkpoint, tracking_uri")
    source = given_or_registered(args.get("checkpoint"), REGISTERED, args.get("tracking_uri") or tracking.tracking_uri(), "tempovla")
    from workloads.tempovla.policy import load_policy_artifact

    load_policy_artifact(source)  # a file that is not a policy is a clear error here, not a failed replica
    return PolicyServer.bind(source)
