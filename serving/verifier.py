"""Serve app `verifier`: sandboxed Python checks and Lean 4 proof checks over HTTP.

    POST /verify/python       {"code": str, "tests": str, "entry_point": str, "mode": str, "timeout_s": float}
    POST /verify/python/batch {"jobs": [<the same objects>, ...]}   (as RL rewards send them)
    POST /verify/lean         {"header": str, "proof": str, "statement": str, "timeout_s": float}
    GET  /healthz             GET /docs (OpenAPI)

Verdicts come from the isolated judge by default (`mode: "isolated"`); `"in_process"` verdicts
say `forgeable: true`. Concurrent single requests are gathered by `@serve.batch` and checked
together by the replica's warm sandbox pool; the batch route judges each of its jobs on its
own, so a malformed job gets an `invalid_request` verdict and the others are judged. Without a Lean toolchain `/verify/lean` answers 503 with the
"Lean toolchain not found" message saying how to configure one.
"""

# No `from __future__ import annotations`: FastAPI reads the request models from annotations.
import dataclasses
from typing import Annotated, Any, Literal, Optional, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from ray import serve

from serving.http import json_api
from workloads.verifiers.lean import LeanConfig, LeanReplPool, LeanToolchainNotFound
from workloads.verifiers.python_sandbox import MODES, InvalidJob, Limits, PythonJob, PythonSandboxPool, parse_job

MAX_CODE_CHARS = 100_000
MAX_TESTS_CHARS = 100_000
MAX_PYTHON_TIMEOUT_S = 30.0
MAX_LEAN_TIMEOUT_S = 300.0
MAX_BATCH_JOBS = 1024

api = json_api("rayworks verifier")
Seconds = Union[StrictFloat, StrictInt]
Mode = Literal[MODES]


class PythonCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[StrictStr, Field(max_length=MAX_CODE_CHARS)]
    tests: Annotated[StrictStr, Field(max_length=MAX_TESTS_CHARS)] = ""
    entry_point: Annotated[Optional[StrictStr], Field(max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = None
    mode: Mode = "isolated"
    timeout_s: Annotated[Seconds, Field(gt=0, le=MAX_PYTHON_TIMEOUT_S)] = 5.0


class PythonBatch(BaseModel):
    """Each job is read on its own (a malformed one gets its own verdict), so they stay plain objects here."""

    model_config = ConfigDict(extra="forbid")

    jobs: Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH_JOBS)]


class LeanCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: Annotated[StrictStr, Field(max_length=10_000)] = ""
    proof: Annotated[StrictStr, Field(min_length=1, max_length=MAX_CODE_CHARS)]
    statement: Annotated[Optional[StrictStr], Field(max_length=10_000)] = None
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
        job = PythonJob(request.code, request.tests, request.entry_point,
                        limits=Limits(timeout_s=float(request.timeout_s)), mode=request.mode)
        return self._public(await self._check_python(job))

    @api.post("/verify/python/batch")
    async def verify_python_batch(self, request: PythonBatch) -> dict:
        jobs = [self._read_job(index, job) for index, job in enumerate(request.jobs)]
        return {"verdicts": [self._public(v) for v in await self.python.verify_batch(jobs)]}

    @staticmethod
    def _read_job(index: int, record: Any):
        job = parse_job(record, max_timeout_s=MAX_PYTHON_TIMEOUT_S)
        too_long = [f for f, cap in (("code", MAX_CODE_CHARS), ("tests", MAX_TESTS_CHARS))
                    if isinstance(job, PythonJob) and len(getattr(job, f)) > cap]
        if too_long:
            return InvalidJob(f"{too_long[0]}: longer than {MAX_CODE_CHARS} characters")
        if isinstance(job, InvalidJob):
            field, _, problem = job.message.partition(": ")
            where = f"jobs[{index}]" if field == "job" else f"jobs[{index}].{field}"
            return InvalidJob(f"{where}: {problem}")
        return job

    @staticmethod
    def _public(verdict) -> dict:
        return {"status": verdict.status, "message": verdict.message, "duration_s": verdict.duration_s,
                "failed_test": verdict.failed_test, "output": verdict.output, "cached": verdict.cached,
                "isolation": verdict.isolation, "forgeable": verdict.forgeable}

    @api.post("/verify/lean")
    async def verify_lean(self, request: LeanCheck):
        if self.lean is None:
            return JSONResponse(status_code=503, content={"error": self.lean_error})
        verdict = await self.lean.check(request.header, request.proof, request.statement, timeout_s=float(request.timeout_s))
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
