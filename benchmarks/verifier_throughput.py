"""Python verifier throughput: the sandboxed zygote pool versus one subprocess per check.

    python -m benchmarks.verifier_throughput [--trivial 600] [--slow 40] [--http-requests 640]

The same checks run (a) as `subprocess.run([python, "-I", "-S", "-c", code + tests])` per
check on a thread pool as wide as the machine, the usual anchor, with no sandbox at all,
and (b) through `PythonSandboxPool` (bubblewrap, rlimits, a fork per check) with one zygote
per core. Two batches: trivial checks (where per-check overhead is everything) and ~50 ms
CPU-bound checks. Then the Serve `verifier` app under 32 concurrent HTTP clients.
Targets: >= 5x the subprocess baseline and >= 400 trivial checks/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from workloads.verifiers.python_sandbox import PythonJob, PythonSandboxPool

SLOW_CODE = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.05:\n    pass\nx = {i}"


def trivial_jobs(count: int) -> list[PythonJob]:
    return [PythonJob(f"def f(x):\n    return x + {i}", f"assert f(1) == {i + 1}") for i in range(count)]


def slow_jobs(count: int) -> list[PythonJob]:
    return [PythonJob(SLOW_CODE.format(i=i), f"assert x == {i}") for i in range(count)]


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
        await pool.verify_batch(trivial_jobs(workers * 4))  # warm the zygotes
        started = time.perf_counter()
        verdicts = await pool.verify_batch(jobs)
        elapsed = time.perf_counter() - started
        await pool.close()
        return len(jobs) / elapsed, sum(v.passed for v in verdicts)

    return asyncio.run(scenario())


def http_rate(requests_total: int, clients: int = 32) -> tuple[float, float, float, int]:
    import requests
    from ray import serve

    from cluster.connect import connect
    from serving.verifier import build_app

    connect(None, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8131})
    serve.run(build_app({}), name="verifier", route_prefix="/")
    url = "http://127.0.0.1:8131/verify/python"
    bodies = [{"code": f"def f(x):\n    return x * {i}", "tests": f"assert f(2) == {2 * i}"} for i in range(requests_total)]
    session = requests.Session()

    def one(body: dict) -> tuple[float, bool]:
        started = time.perf_counter()
        response = session.post(url, json=body, timeout=60)
        return time.perf_counter() - started, response.json().get("status") == "passed"

    for body in bodies[:clients]:
        one(body)  # warm-up: replica, zygotes, connections
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as executor:
        results = list(executor.map(one, bodies))
    elapsed = time.perf_counter() - started
    serve.shutdown()
    latencies = sorted(latency for latency, _ in results)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return len(bodies) / elapsed, statistics.median(latencies), p99, sum(ok for _, ok in results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trivial", type=int, default=600)
    parser.add_argument("--slow", type=int, default=40)
    parser.add_argument("--http-requests", type=int, default=640)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1

    trivial_sub, trivial_sub_ok = subprocess_rate(trivial_jobs(args.trivial), cores)
    trivial_pool, trivial_pool_ok = pool_rate(trivial_jobs(args.trivial), cores)
    slow_sub, _ = subprocess_rate(slow_jobs(args.slow), cores)
    slow_pool, slow_pool_ok = pool_rate(slow_jobs(args.slow), cores)
    assert trivial_sub_ok == trivial_pool_ok == args.trivial and slow_pool_ok == args.slow, "a check failed"
    http_checks, p50, p99, http_ok = http_rate(args.http_requests)

    print(f"verifier_throughput on {cores} cores (checks/s; higher is better)")
    rows = [
        ("batch", "subprocess per check", "sandboxed pool", "ratio"),
        (f"{args.trivial} trivial", f"{trivial_sub:.0f}", f"{trivial_pool:.0f}", f"{trivial_pool / trivial_sub:.2f}x"),
        (f"{args.slow} x ~50 ms", f"{slow_sub:.1f}", f"{slow_pool:.1f}", f"{slow_pool / slow_sub:.2f}x"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    print(f"  Serve /verify/python, 32 clients: {http_checks:.0f} checks/s, p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms ({http_ok}/{args.http_requests} passed)")
    print("  targets: >= 5x the subprocess baseline, >= 400 trivial checks/s")
    print(json.dumps({"benchmark": "verifier_throughput", "value": round(trivial_pool, 1), "baseline": round(trivial_sub, 1),
                      "ratio": round(trivial_pool / trivial_sub, 3), "unit": "checks/s"}))


if __name__ == "__main__":
    main()
