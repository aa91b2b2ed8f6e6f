"""The step verifier as a Ray actor: the first failing step of any trace, for TRI's repair loop
and its DPO labels (`workloads.tri.traces.verify_trace`)."""

from __future__ import annotations

import dataclasses

import ray

from workloads.tri.traces import STEP_TASKS, verify_trace


@ray.remote(num_cpus=0.5)
class StepVerifier:
    def verify(self, task: str, problem, text: str) -> dict:
        """{steps, verified, first_failure, solved} of `text` for `problem` of task family `task`."""
        if task not in STEP_TASKS:
            raise ValueError(f"task: expected one of {', '.join(STEP_TASKS)}, got {task!r}")
        return dataclasses.asdict(verify_trace(STEP_TASKS[task], problem, text))
