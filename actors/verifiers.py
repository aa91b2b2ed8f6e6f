"""Verifier actors: thin async Ray actors around the sandboxed Python pool and the Lean pool.

    verifier = PythonVerifier.remote(num_workers=2)
    verdicts = ray.get(verifier.verify_batch.remote([{"code": ..., "tests": ...}, ...]))

Jobs and verdicts cross the actor boundary as plain dicts, so any caller (a GRPO reward
function, TRI's repair loop, a Serve replica) can use them without importing this module's
types. The sandbox refuses to start where bubblewrap cannot run, unless the caller passes
`isolation="rlimits-only"` explicitly.
"""

from __future__ import annotations

import dataclasses
import os

import ray

from workloads.config import ConfigError
from workloads.tasks import TaskConfig, task_for
from workloads.verifiers.lean import LeanConfig, LeanReplPool
from workloads.verifiers.python_sandbox import PythonSandboxPool, parse_job


@ray.remote(num_cpus=1)
class PythonVerifier:
    def __init__(self, num_workers: int | None = None, isolation: str = "bubblewrap", **pool_options):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.pool = PythonSandboxPool(num_workers=num_workers, isolation=isolation, **pool_options)

    async def verify_batch(self, jobs: list[dict]) -> list[dict]:
        """A malformed job gets its own `invalid_request` verdict; the rest are judged."""
        verdicts = await self.pool.verify_batch([parse_job(job, self.pool.default_limits) for job in jobs])
        return [v.to_dict() for v in verdicts]

    async def verify_steps(self, steps: list[str], reference_states: list[dict], timeout_s: float | None = None) -> dict:
        """The first step whose variables differ from `reference_states` (see PythonSandboxPool.verify_steps)."""
        limits = self.pool.default_limits if timeout_s is None else dataclasses.replace(self.pool.default_limits, timeout_s=timeout_s)
        result = await self.pool.verify_steps(steps, reference_states, limits)
        return {"steps": [v.to_dict() for v in result.steps], "first_failure": result.first_failure,
                "status": result.verdict.status}

    def stats(self) -> dict:
        return dict(self.pool.stats)

    async def close(self) -> None:
        await self.pool.close()


@ray.remote(num_cpus=1)
class LeanVerifier:
    """Raises LeanToolchainNotFound at construction when no toolchain is configured."""

    def __init__(self, config: dict | None = None, command: list[str] | None = None):
        self.pool = LeanReplPool(LeanConfig(**(config or {})), command=command)

    async def verify(self, header: str, proof: str, statement: str | None = None, timeout_s: float | None = None) -> dict:
        return (await self.pool.check(header, proof, statement, timeout_s)).to_dict()

    async def verify_file(self, text: str, statement: str | None = None, timeout_s: float | None = None) -> dict:
        return (await self.pool.check_file(text, statement, timeout_s)).to_dict()

    def stats(self) -> dict:
        return dict(self.pool.stats)

    async def close(self) -> None:
        await self.pool.close()


class TaskChecker:
    """Checks student completions of a task: in process when the task checks itself (arithmetic),
    through a PythonVerifier actor when its answers are programs (python). Picklable, so Ray
    Train workers check with it directly.

    The verifier actor reserves no CPU: it works only while its caller waits for the verdicts."""

    def __init__(self, cfg: TaskConfig, verifier_workers: int = 2):
        self.cfg, self.task = cfg, task_for(cfg)
        self.verifier = None
        if self.task.needs_verifier:
            self.verifier = PythonVerifier.options(num_cpus=0).remote(num_workers=verifier_workers)
            try:
                ray.get(self.verifier.stats.remote())
            except ray.exceptions.RayActorError as exc:  # bubblewrap missing or blocked: say so before training
                raise ConfigError(f"task.kind={cfg.kind}: the Python verifier cannot start: {exc}") from None

    def __call__(self, problems: list, completions: list[str]) -> list[bool]:
        if self.verifier is None:
            return [self.task.check(p, c) for p, c in zip(problems, completions)]
        jobs = [self.task.verify_job(p, c) for p, c in zip(problems, completions)]
        return [v["status"] == "passed" for v in ray.get(self.verifier.verify_batch.remote(jobs))]

    def stats(self) -> dict[str, float]:
        """The verifier's counters (`verifier_checks`, `verifier_cache_hits`, ...); empty without one."""
        if self.verifier is None:
            return {}
        return {f"verifier_{k}": v for k, v in ray.get(self.verifier.stats.remote()).items()}
