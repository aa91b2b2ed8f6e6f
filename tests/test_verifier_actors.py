"""The verifier actors on a real local Ray (2 CPUs)."""

import sys
from pathlib import Path

import pytest
import ray

from actors.verifiers import LeanVerifier, PythonVerifier


def test_python_verifier_actor_batches_and_steps(local_ray):
    verifier = PythonVerifier.remote(num_workers=2)
    jobs = [{"code": f"x = {i}", "tests": "assert x % 2 == 0"} for i in range(6)]
    jobs.append({"code": "while True:\n    pass", "timeout_s": 1.0})
    verdicts = ray.get(verifier.verify_batch.remote(jobs))
    assert [v["status"] for v in verdicts] == ["passed", "failed"] * 3 + ["timeout"]
    steps = ray.get(verifier.verify_steps.remote(["a = 1", "b = a + 1", "c = b * 5"], [{"a": 1}, {"b": 3}, {"c": 10}]))
    assert steps["first_failure"] == 1 and [s["status"] for s in steps["steps"]] == ["passed", "failed", "passed"]
    mixed = ray.get(verifier.verify_batch.remote([{"code": "x = 1", "test": "typo"}, {"code": "x = 1", "tests": "assert x"}]))
    assert [v["status"] for v in mixed] == ["invalid_request", "passed"] and mixed[0]["message"].startswith("test:")
    assert ray.get(verifier.stats.remote())["checks"] == 9  # 7 + the steps job + 1 (the invalid job is not a check)
    ray.get(verifier.close.remote())


def test_lean_verifier_actor_reports_a_missing_toolchain(local_ray):
    actor = LeanVerifier.remote({"command": ("no-such-lake", "env", "repl")})
    with pytest.raises(ray.exceptions.ActorDiedError, match="Lean toolchain not found"):
        ray.get(actor.stats.remote())


def test_lean_verifier_actor_with_the_protocol_standin(local_ray):
    standin = [sys.executable, str(Path(__file__).with_name("lean_repl_standin.py"))]
    actor = LeanVerifier.remote({"repls_per_header": 1, "timeout_s": 2.0, "sandbox": False}, command=standin)
    verdict = ray.get(actor.verify.remote("import Mathlib", "theorem t : True := trivial"))
    assert verdict["status"] == "passed"
    ray.get(actor.close.remote())
