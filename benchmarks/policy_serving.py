"""Policy serving: control loops at 50 Hz against the `policy` Serve app on this machine's loopback.

    python -m benchmarks.policy_serving [--loops 64] [--hz 50] [--groups 4] [--seconds 20]
                                        [--env rayworks/G1Velocity-v0] [--ingress direct|proxy]

The policy is a PPO specialist of `--env` at `ppo`'s default size, saved in the one policy
format (`workloads.policies`) and served by `serving.policy` (one replica), as `rayworks serve policy --direct-ingress` serves it
(the replica answers HTTP itself; `--ingress proxy`: through Serve's HTTP proxy, Serve's
default). The loops tick on
one 50 Hz clock in `--groups` phases (evenly offset within the control period); the loops of a
group send their observations in one request, as a robot's controller host batches its
robots. Observations are replayed from a real rollout of the environment (recorded before the
clock starts), so the clients cost next to nothing. An observation is answered in time when its
actions arrive within the control period of its tick; a group whose previous request is still
out skips its tick (those observations count as offered and not answered in time).

Reported: observations offered and answered in time, request latency p50/p99, and for
reference the in-process policy's time for one batch of a group's size. The JSON line: answered
in time against offered; ratio = the fraction (target >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

PORT = 8134


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def specialist(env: str, directory: Path):
    """A PPO specialist of `env` at `ppo`'s default size, saved as `ppo` saves it; (path, policy, spec)."""
    import torch

    from pipelines import ppo
    from workloads.policies import save_policy

    config = ppo.Config(env=env)
    spec = ppo.policy_spec(config)
    torch.manual_seed(0)
    policy = ppo.build_policy(config, spec).eval()
    return save_policy(directory, ppo.POLICY_KIND, policy.state_dict(), ppo.policy_specs(config, spec)), policy, spec


def recorded_observations(env: str, policy, loops: int, steps: int) -> list:
    """(steps, loops, obs_dim) observations of `loops` environments driven by the policy."""
    import numpy as np
    import torch

    import envs

    batch = envs.make_batched(env, loops, seed=0)
    observations = []
    obs, _ = batch.reset()
    for _ in range(steps):
        observations.append(np.asarray(obs, dtype=np.float32))
        actions, _ = policy.act(torch.from_numpy(observations[-1]), deterministic=True)
        obs = batch.step(actions.numpy())[0]
    batch.close()
    return observations


async def control_loops(url: str, recorded: list, groups: int, hz: float, seconds: float) -> dict:
    import aiohttp

    period = 1.0 / hz
    loops = recorded[0].shape[0]
    members = [list(range(g, loops, groups)) for g in range(groups)]
    offered = answered = skipped = 0
    latencies: list[float] = []
    errors: list[str] = []

    async def group(g: int, session, start: float) -> None:
        nonlocal offered, skipped
        tick = 0
        pending: asyncio.Task | None = None
        while True:
            due = start + tick * period + g * period / groups
            if due - start >= seconds:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            offered += len(members[g])
            if pending is not None and not pending.done():
                skipped += len(members[g])
            else:
                rows = recorded[tick % len(recorded)][members[g]].tolist()
                pending = asyncio.create_task(request(session, rows, due))
            tick += 1
        if pending is not None:
            await pending

    async def request(session, rows: list, due: float) -> None:
        nonlocal answered
        sent = time.perf_counter()
        try:
            async with session.post(url, json={"observation": rows}) as response:
                body = await response.json()
                if response.status != 200 or len(body.get("actions", [])) != len(rows):
                    errors.append(f"{response.status}: {str(body)[:200]}")
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            errors.append(repr(exc))
            return
        done = time.perf_counter()
        latencies.append(done - sent)
        if done - due <= period:
            answered += len(rows)

    connector = aiohttp.TCPConnector(limit=groups * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        start = time.perf_counter() + 0.1
        await asyncio.gather(*(group(g, session, start) for g in range(groups)))
    return {"offered": offered, "answered": answered, "skipped": skipped, "latencies": latencies, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    import requests
    import torch
    from ray import serve

    from cluster.connect import connect
    from serving.http import direct_ingress_environment, free_port
    from serving.policy import build_app

    parser = argparse.ArgumentParser(prog="python -m benchmarks.policy_serving", description=__doc__.split("\n")[0])
    parser.add_argument("--loops", type=int, default=64)
    parser.add_argument("--hz", type=float, default=50.0)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--env", default="rayworks/G1Velocity-v0")
    parser.add_argument("--ingress", choices=["direct", "proxy"], default="direct")
    args = parser.parse_args(argv)
    if not 1 <= args.groups <= args.loops:
        parser.error("--groups must be in 1..--loops")

    scratch = Path(tempfile.mkdtemp(prefix="policy-serving-"))
    path, policy, spec = specialist(args.env, scratch)
    recorded = recorded_observations(args.env, policy, args.loops, 100)
    rows = torch.from_numpy(recorded[0][: args.loops // args.groups])
    torch.set_num_threads(1)
    for _ in range(20):
        policy.act(rows, deterministic=True)
    started = time.perf_counter()
    for _ in range(200):
        policy.act(rows, deterministic=True)
    in_process_ms = (time.perf_counter() - started) / 200 * 1000

    proxy_port = PORT
    if args.ingress == "direct":  # as `rayworks serve policy --direct-ingress` starts it
        os.environ.update(direct_ingress_environment("127.0.0.1", PORT))
        proxy_port = free_port()
    connect(None, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
    try:
        serve.run(build_app({"checkpoint": str(path)}), name="policy", route_prefix="/")
        url = f"http://127.0.0.1:{PORT}/act"
        for _ in range(20):  # warm-up: the replica's first requests (nothing is cached between requests)
            requests.post(url, json={"observation": recorded[0][:4].tolist()}, timeout=60).raise_for_status()
        result = asyncio.run(control_loops(url, recorded, args.groups, args.hz, args.seconds))
    finally:
        serve.shutdown()

    fraction = result["answered"] / max(result["offered"], 1)
    lat = [x * 1000 for x in result["latencies"]]
    print(f"\n{args.loops} control loops at {args.hz:g} Hz in {args.groups} phase groups ({args.loops // args.groups} "
          f"observations a request) for {args.seconds:g} s; {args.env} PPO specialist ({spec.obs_dim} -> {spec.action_dim}); "
          f"{args.ingress} ingress")
    print(f"{'observations offered':<36}{result['offered']:>10}")
    print(f"{'answered within the control period':<36}{result['answered']:>10}  ({fraction:.3f})")
    print(f"{'skipped (request still out)':<36}{result['skipped']:>10}")
    print(f"{'errors':<36}{len(result['errors']):>10}  {result['errors'][:2]}")
    print(f"{'request latency p50 / p99 (ms)':<36}{percentile(lat, 0.5):>10.2f} / {percentile(lat, 0.99):.2f}")
    print(f"{'in-process policy, one batch (ms)':<36}{in_process_ms:>10.3f}")
    if lat:
        print(f"{'mean requests per second':<36}{len(lat) / args.seconds:>10.1f}  (mean latency {statistics.fmean(lat):.2f} ms)")
    print(json.dumps({"benchmark": "policy_serving", "value": result["answered"], "baseline": result["offered"],
                      "ratio": round(fraction, 4), "unit": f"observations answered within the {1000 / args.hz:g} ms control period"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
