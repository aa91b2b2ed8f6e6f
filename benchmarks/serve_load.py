"""Load test of the Serve apps `verifier` and `generate` on this machine's loopback.

    python -m benchmarks.serve_load [--clients 32] [--seconds 200] [--max-requests 20000]

Per app: a warm-up, the replica's resident memory, then N concurrent clients send requests
for T seconds or until the request cap (whichever comes first), then the replica's memory
again. Every request is new to the app (no verdict-cache hits). Reported: requests sent,
errors (must be 0: any non-200 or transport error), latency p50/p99, and the replica's RSS
before and after (target: no growth beyond 10% over 20,000 requests). The JSON line is the
verifier replica's RSS after against before.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

PORT = 8133


def replica_rss_mb(app: str) -> float:
    """Resident memory of the app's replica actor process (read from /proc)."""
    from ray.util.state import list_actors

    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
              if a.class_name.startswith("ServeReplica:") and f":{app}:" in f":{a.class_name.split(':', 1)[1]}"]
    if not actors:
        raise RuntimeError(f"no live replica of {app}")
    with open(f"/proc/{actors[0].pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def load(url_path: str, body_of, clients: int, seconds: float, max_requests: int) -> dict:
    import requests

    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop_at:
            with lock:
                index = next(counter)
            if index >= max_requests:
                return
            started = time.perf_counter()
            try:
                response = session.post(f"http://127.0.0.1:{PORT}{url_path}", json=body_of(index), timeout=120)
                ok = response.status_code == 200
                if not ok:
                    errors.append(f"{response.status_code} {response.text[:120]}")
            except requests.RequestException as exc:
                errors.append(repr(exc)[:120])
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - started
    latencies.sort()
    sent = len(latencies) + len(errors)
    return {"requests": sent, "errors": len(errors), "first_error": errors[0] if errors else "",
            "per_s": sent / elapsed, "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")}


APPS = {
    "verifier": ("/verify/python", lambda i: {"code": f"def f(x):\n    return x * {i}", "tests": f"assert f(2) == {2 * i}"}),
    "generate": ("/generate", lambda i: {"prompt": f"Q: {i % 97}+{i % 89}", "max_new_tokens": 2}),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=200.0, help="per app")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per app")
    args = parser.parse_args(argv)

    from ray import serve

    from cluster.connect import connect
    from serving.generate import build_app as build_generate
    from serving.verifier import build_app as build_verifier

    connect(None, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    tracking = f"sqlite:///{tempfile.mkdtemp(prefix='rayworks-serve-load-')}/mlflow.db"  # empty: the tiny default model
    builders = {"verifier": lambda: build_verifier({}), "generate": lambda: build_generate({"tracking_uri": tracking})}
    results = {}
    for app, (path, body_of) in APPS.items():
        serve.run(builders[app](), name=app, route_prefix="/")
        load(path, lambda i: body_of(10**9 + i), args.clients, 5.0, 4 * args.clients)  # warm-up (other bodies)
        before = replica_rss_mb(app)
        result = load(path, body_of, args.clients, args.seconds, args.max_requests)
        result.update(rss_before_mb=before, rss_after_mb=replica_rss_mb(app))
        results[app] = result
        serve.delete(app)
    serve.shutdown()

    print(f"serve_load: {args.clients} clients, up to {args.seconds:.0f} s or {args.max_requests} requests per app, loopback")
    rows = [("app", "requests", "errors", "req/s", "p50 ms", "p99 ms", "RSS before MB", "RSS after MB", "growth")]
    for app, r in results.items():
        rows.append((app, str(r["requests"]), str(r["errors"]), f"{r['per_s']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                     f"{r['rss_before_mb']:.0f}", f"{r['rss_after_mb']:.0f}",
                     f"{100 * (r['rss_after_mb'] / r['rss_before_mb'] - 1):+.1f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    for app, r in results.items():
        if r["errors"]:
            print(f"  {app}: first error: {r['first_error']}")
    print("  targets: 0 errors; replica RSS growth <= 10% over 20,000 requests")
    verifier = results["verifier"]
    print(json.dumps({"benchmark": "serve_load", "value": round(verifier["rss_after_mb"], 1),
                      "baseline": round(verifier["rss_before_mb"], 1),
                      "ratio": round(verifier["rss_after_mb"] / verifier["rss_before_mb"], 3),
                      "unit": f"MB verifier replica RSS after/before {verifier['requests']} requests"}))


if __name__ == "__main__":
    main()
