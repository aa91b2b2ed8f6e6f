"""Python verifier throughput: the sandboxed pool's isolated judge versus one subprocess per check.

    python -m benchmarks.verifier_throughput [--trivial 600] [--slow 40] [--http-requests 640]

The same checks run (a) as `subprocess.run([python, "-I", "-S", "-c", code + tests])` per
check on a thread pool as wide as the machine, the usual anchor, with no sandbox at all;
(b) through `PythonSandboxPool` in its default isolated mode (bubblewrap, the candidate and
the judge in two processes talking over pipes); (c) the same pool in the forgeable
in-process mode (one fork per check), for what isolation costs. Two batches: trivial checks
(where per-check overhead is everything) and ~50 ms CPU-bound checks. Then the Serve
`verifier` app under 32 concurrent HTTP clients, one check per request and 32 checks per
request (the batch route, as RL rewards send them), against the pool in process on the same
workload and mode. Every timed job is new to the pool (no verdict cache hits).
Targets: isolated >= 3x the subprocess baseline; HTTP >= 0.5x the pool in process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from workloads.verifiers.python_sandbox import PythonJob, PythonSandboxPool

SLOW_CODE = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.05:\n    pass\nx = {i}"


def trivial_jobs(count: int, mode: str = "isolated", start: int = 0) -> list[PythonJob]:
    return [PythonJob(f"def f(x):\n    return x + {i}", f"assert f(1) == {i + 1}", mode=mode) for i in range(start, start + count)]


def slow_jobs(count: int, mode: str = "isolated") -> list[PythonJob]:
    return [PythonJob(SLOW_CODE.format(i=i), f"assert x == {i}", mode=mode) for i in range(count)]


def subprocess_rate(jobs: list[PythonJob], workers: int) -> tuple[float, int]:
    def one(job: PythonJob) -> bool:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", job.code + "\n" + job.tests],
                              capture_output=True, timeout=30)
        return done.returncode == 0

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as executor:
        passed = sum(executor.map(one, jobs))
    return len(jobs) / (time.perf_counter() - started), passed


def pool_rate(jobs: list[PythonJob], workers: int) -> tuple[float, int]:
    async def scenario():
        pool = PythonSandboxPool()  # its default: two zygotes per core
        await pool.start()
        await pool.verify_batch(trivial_jobs(workers * 4, start=10**6))  # warm the zygotes (other jobs)
        started = time.perf_counter()
        verdicts = await pool.verify_batch(jobs)
        elapsed = time.perf_counter() - started
        await pool.close()
        return len(jobs) / elapsed, sum(v.passed for v in verdicts)

    return asyncio.run(scenario())


def http_rates(requests_total: int, clients: int = 32, per_batch: int = 32) -> dict:
    """Serve `verifier` over loopback HTTP: single checks, then the batch route."""
    import requests
    from ray import serve

    from cluster.connect import connect
    from serving.verifier import build_app

    connect(None, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8131})
    serve.run(build_app({}), name="verifier", route_prefix="/")
    base = "http://127.0.0.1:8131"
    local = threading.local()

    def post(path: str, body: dict) -> tuple[float, dict]:
        local.session = getattr(local, "session", None) or requests.Session()
        started = time.perf_counter()
        response = local.session.post(base + path, json=body, timeout=120)
        return time.perf_counter() - started, response.json()

    def job(i: int) -> dict:
        return {"code": f"def f(x):\n    return x * {i}", "tests": f"assert f(2) == {2 * i}"}

    def timed(path: str, bodies: list[dict], checks: int) -> dict:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as executor:
            results = list(executor.map(lambda body: post(path, body), bodies))
        elapsed = time.perf_counter() - started
        latencies = sorted(latency for latency, _ in results)
        verdicts = [v for _, answer in results for v in answer.get("verdicts", [answer])]
        return {"checks/s": checks / elapsed, "p50": statistics.median(latencies),
                "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
                "passed": sum(v.get("status") == "passed" for v in verdicts), "checks": checks}

    with ThreadPoolExecutor(clients) as executor:  # warm-up: replica, zygotes, connections (jobs not timed)
        list(executor.map(lambda i: post("/verify/python", job(10**7 + i)), range(2 * clients)))
    single = timed("/verify/python", [job(i) for i in range(requests_total)], requests_total)
    batches = [{"jobs": [job(10**5 + b * per_batch + k) for k in range(per_batch)]} for b in range(requests_total // per_batch * 4)]
    batch = timed("/verify/python/batch", batches, len(batches) * per_batch)
    serve.shutdown()
    return {"single": single, "batch": batch}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trivial", type=int, default=600)
    parser.add_argument("--slow", type=int, default=40)
    parser.add_argument("--http-requests", type=int, default=640)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1

    trivial_sub, trivial_sub_ok = subprocess_rate(trivial_jobs(args.trivial), cores)
    trivial_isolated, trivial_isolated_ok = pool_rate(trivial_jobs(args.trivial), cores)
    trivial_in_process, trivial_in_process_ok = pool_rate(trivial_jobs(args.trivial, "in_process"), cores)
    slow_sub, _ = subprocess_rate(slow_jobs(args.slow), cores)
    slow_isolated, slow_isolated_ok = pool_rate(slow_jobs(args.slow), cores)
    slow_in_process, _ = pool_rate(slow_jobs(args.slow, "in_process"), cores)
    assert trivial_sub_ok == trivial_isolated_ok == trivial_in_process_ok == args.trivial, "a check failed"
    assert slow_isolated_ok == args.slow, "a check failed"
    http = http_rates(args.http_requests)
    # HTTP is compared with the pool in process on the same workload in the same (isolated) mode
    http_pool, _ = pool_rate(trivial_jobs(http["batch"]["checks"], start=2 * 10**6), cores)
    assert all(r["passed"] == r["checks"] for r in http.values()), "an HTTP check failed"

    print(f"verifier_throughput on {cores} cores (checks/s; higher is better)")
    rows = [
        ("batch", "subprocess per check", "isolated judge", "in-process (forgeable)", "isolated / subprocess"),
        (f"{args.trivial} trivial", f"{trivial_sub:.0f}", f"{trivial_isolated:.0f}", f"{trivial_in_process:.0f}",
         f"{trivial_isolated / trivial_sub:.2f}x"),
        (f"{args.slow} x ~50 ms", f"{slow_sub:.1f}", f"{slow_isolated:.1f}", f"{slow_in_process:.1f}",
         f"{slow_isolated / slow_sub:.2f}x"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    print(f"  Serve verifier, 32 clients, isolated judge; pool in process on the same jobs: {http_pool:.0f} checks/s")
    for name, label in (("single", "/verify/python (1 check/request)"), ("batch", "/verify/python/batch (32 checks/request)")):
        r = http[name]
        print(f"    {label}: {r['checks/s']:.0f} checks/s = {r['checks/s'] / http_pool:.2f}x the pool, "
              f"p50 {r['p50'] * 1000:.1f} ms, p99 {r['p99'] * 1000:.1f} ms per request")
    print("  targets: isolated >= 3x the subprocess baseline; HTTP (batch route) >= 0.5x the pool in process")
    print(json.dumps({"benchmark": "verifier_throughput", "value": round(trivial_isolated, 1), "baseline": round(trivial_sub, 1),
                      "ratio": round(trivial_isolated / trivial_sub, 3), "unit": "checks/s"}))


if __name__ == "__main__":
    main()
