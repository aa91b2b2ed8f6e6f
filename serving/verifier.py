"""Serve app `verifier`: sandboxed Python checks and Lean 4 proof checks over HTTP.

    POST /verify/python {"code": str, "tests": str, "timeout_s": float}
    POST /verify/lean   {"header": str, "proof": str, "timeout_s": float}
    GET  /healthz       GET /docs (OpenAPI)

Concurrent Python requests are gathered by `@serve.batch` and checked together by the
replica's warm sandbox pool. Without a Lean toolchain `/verify/lean` answers 503 with the
"Lean toolchain not found" message saying how to configure one.
"""

# No `from __future__ import annotations`: FastAPI reads the request models from annotations.
import dataclasses
from typing import Annotated, Optional, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from ray import serve

from serving.http import json_api
from workloads.verifiers.lean import LeanConfig, LeanReplPool, LeanToolchainNotFound
from workloads.verifiers.python_sandbox import Limits, PythonJob, PythonSandboxPool

MAX_CODE_CHARS = 100_000
MAX_TESTS_CHARS = 100_000
MAX_PYTHON_TIMEOUT_S = 30.0
MAX_LEAN_TIMEOUT_S = 300.0

api = json_api("rayworks verifier")
Seconds = Union[StrictFloat, StrictInt]


class PythonCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[StrictStr, Field(max_length=MAX_CODE_CHARS)]
    tests: Annotated[StrictStr, Field(max_length=MAX_TESTS_CHARS)] = ""
    timeout_s: Annotated[Seconds, Field(gt=0, le=MAX_PYTHON_TIMEOUT_S)] = 5.0


class LeanCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: Annotated[StrictStr, Field(max_length=10_000)] = ""
    proof: Annotated[StrictStr, Field(min_length=1, max_length=MAX_CODE_CHARS)]
    timeout_s: Annotated[Seconds, Field(gt=0, le=MAX_LEAN_TIMEOUT_S)] = 60.0


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
@serve.ingress(api)
class Verifier:
    def __init__(self, workers: Optional[int] = None, isolation: str = "bubblewrap",
                 lean_project: Optional[str] = None, lean_command: Optional[list] = None):
        self.python = PythonSandboxPool(num_workers=workers, isolation=isolation)
        self.lean, self.lean_error = None, None
        try:
            config = LeanConfig(project_dir=lean_project or ".")
            if lean_command:
                config = dataclasses.replace(config, command=tuple(lean_command))
            self.lean = LeanReplPool(config) if lean_project or lean_command else None
            if self.lean is None:
                raise LeanToolchainNotFound("Lean toolchain not found: no Lean project configured "
                                            "(start with --lean-project DIR, a Lake project with the REPL built)")
        except LeanToolchainNotFound as exc:
            self.lean_error = str(exc)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _check_python(self, jobs: list) -> list:
        return await self.python.verify_batch(jobs)

    @api.post("/verify/python")
    async def verify_python(self, request: PythonCheck) -> dict:
        job = PythonJob(request.code, request.tests, limits=Limits(timeout_s=float(request.timeout_s)))
        verdict = await self._check_python(job)
        return {"status": verdict.status, "message": verdict.message, "duration_s": verdict.duration_s,
                "failed_test": verdict.failed_test, "output": verdict.output, "cached": verdict.cached}

    @api.post("/verify/lean")
    async def verify_lean(self, request: LeanCheck):
        if self.lean is None:
            return JSONResponse(status_code=503, content={"error": self.lean_error})
        verdict = await self.lean.check(request.header, request.proof, timeout_s=float(request.timeout_s))
        return verdict.to_dict()

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "python": {"isolation": self.python.isolation, **self.python.stats},
                "lean": "ready" if self.lean else self.lean_error}


def build_app(args: Optional[dict] = None):
    """Builder for `serve run serving.verifier:build_app` and serving/verifier.yaml."""
    args = dict(args or {})
    known = {"workers", "isolation", "lean_project", "lean_command"}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"verifier app: unknown argument(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return Verifier.bind(**args)
