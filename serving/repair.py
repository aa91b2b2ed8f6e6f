"""Serve app `repair`: TRI's repair loop behind HTTP.

    POST /repair {"task": "units", "problem": "4 km>hm>dam>m", "draft": optional str,
                  "method": "tri" | "regenerate", "window": int, "rounds": int, "seed": int}
         -> {"solution", "solved", "draft_solved", "steps": [{"step", "verified"}], "first_failure",
             "generated_tokens", "prompt_tokens", "infills", "regenerations", "fallbacks", "too_long",
             "checker_errors"}
    GET  /healthz

`problem` is the problem's key as the task writes it (units: quantity and the units walked,
"4 km>hm>dam"; arithmetic: the expression, "7+5-3"; python: the start and the operations,
"7; *3; +4"; python steps run in the sandbox, and a step it stops counts in `checker_errors`).
Without `draft`, the draft model writes one. The models are the
`rayworks-tri-draft` and `rayworks-tri-infiller` directories given, else the newest registered
versions in MLflow (the `tri` pipeline registers both). Start it with `rayworks serve repair`.
"""

# No `from __future__ import annotations`: FastAPI must see the real request model type.
import logging
from typing import Annotated, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from ray import serve

from serving.http import Utf8Str, error_response, given_or_registered, json_api
from workloads import tracking

logger = logging.getLogger("ray.serve")

REGISTERED_DRAFT, REGISTERED_INFILLER = "rayworks-tri-draft", "rayworks-tri-infiller"
MAX_DRAFT_CHARS = 8192
MAX_NEW_TOKENS = {"draft": 160, "infiller": 96}  # a whole trace; a bridge of a few steps
TEMPERATURE = 0.7  # the pipeline's repair.temperature

api = json_api("rayworks repair")


class RepairRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["units", "arithmetic", "python"]
    problem: Annotated[Utf8Str, Field(min_length=1, max_length=256)]
    draft: Optional[Annotated[Utf8Str, Field(max_length=MAX_DRAFT_CHARS)]] = None
    method: Literal["tri", "regenerate"] = "tri"
    window: Annotated[StrictInt, Field(ge=1, le=16)] = 3
    rounds: Annotated[StrictInt, Field(ge=0, le=8)] = 2
    seed: StrictInt = 0


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8)
@serve.ingress(api)
class Repairer:
    def __init__(self, draft: str, infiller: str):
        from workloads.lm import load_lm

        torch.set_num_threads(1)
        self.sources = {"draft": draft, "infiller": infiller}
        self.models = {name: load_lm(source) for name, source in self.sources.items()}

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", **self.sources}

    @api.post("/repair")
    def repair(self, request: RepairRequest):
        from workloads.tri.repair import model_generator, repair_batch
        from workloads.tri.traces import STEP_TASKS, verify_trace

        task = STEP_TASKS[request.task]
        try:
            problem = task.parse(request.problem)
        except ValueError as exc:
            return error_response(422, [str(exc)])
        write, infill = (model_generator(*self.models[name], MAX_NEW_TOKENS[name], TEMPERATURE, request.seed + offset)
                         for offset, name in enumerate(("draft", "infiller")))
        (attempt,) = repair_batch(task, [problem], request.window, request.rounds, request.method, write, infill,
                                  drafts=None if request.draft is None else [request.draft])
        verdict = verify_trace(task, problem, attempt.trace)
        return {"solution": attempt.trace, "solved": attempt.solved, "draft_solved": attempt.draft_solved,
                "steps": [{"step": step, "verified": ok} for step, ok in zip(verdict.steps, verdict.verified)],
                "first_failure": verdict.first_failure, "generated_tokens": attempt.generated_tokens,
                "prompt_tokens": attempt.prompt_tokens, "infills": attempt.infills,
                "regenerations": attempt.regenerations, "fallbacks": attempt.fallbacks, "too_long": attempt.too_long,
                "checker_errors": attempt.checker_errors}


def build_app(args: dict | None = None):
    """Application builder for `serve run serving.repair:build_app draft=... infiller=...`."""
    args = dict(args or {})
    unknown = set(args) - {"draft", "infiller", "tracking_uri"}
    if unknown:
        raise ValueError(f"repair app: unknown argument(s) {sorted(unknown)}; known: draft, infiller, tracking_uri")
    uri = args.get("tracking_uri") or tracking.tracking_uri()
    # Resolved here, before any replica starts: a missing model is a clear error, not a failed replica.
    return Repairer.bind(given_or_registered(args.get("draft"), REGISTERED_DRAFT, uri, "tri"),
                         given_or_registered(args.get("infiller"), REGISTERED_INFILLER, uri, "tri"))
