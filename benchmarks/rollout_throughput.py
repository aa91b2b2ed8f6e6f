"""Rollout throughput: control steps/s through the rollout workers, policy inference included,
against the physical limit measured in the same run.

    python -m benchmarks.rollout_throughput [--steps 200] [--repeats 3]

For G1 (velocity tracking on the whole-body-collision robot, 10 substeps) and Panda (reach, 4 substeps):
- limit: a raw single-process loop of `mj_step(model, data, nstep=substeps)` on the same
  compiled model (random controls around the default pose, reset when the robot falls),
  control steps/s, times the number of cores Ray has;
- workers: `RolloutGroup.collect` with 1 and with 2 workers (pinned to cores, one thread
  each), each stepping N environments (G1 64, Panda 512) with the 128x128 actor sampling
  actions every step; wall time around `collect` (weights broadcast included).
The last line is the JSON record for the environment with the lower fraction of its limit.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import mujoco
import numpy as np
import ray

import envs
from actors.rollout import PolicySpec, RolloutGroup, limit_threads

# robot -> (environment, environments per worker): Panda's physics step is ~10x cheaper than
# G1's, so a worker needs more of them to amortise the per-step policy call.
CASES = {"G1": ("rayworks/G1Velocity-v0", 64), "Panda": ("rayworks/PandaReach-v0", 512)}


def raw_limit(env_id: str, seconds: float) -> float:
    """Control steps/s of a bare mj_step loop on the task's model, one process."""
    task = envs.TASKS[env_id](1, 0)
    model, substeps = task.sim.model, task.sim.substeps
    data = mujoco.MjData(model)
    mujoco.mj_setState(model, data, task.sim.state[0], mujoco.mjtState.mjSTATE_FULLPHYSICS)
    start_state = task.sim.state[0].copy()
    rng = np.random.default_rng(0)
    base = data.ctrl.copy() if model.nkey == 0 else model.key_ctrl[0].copy()
    noise = rng.normal(0, 0.25, (1024, model.nu))
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for row in noise[: 256]:
            data.ctrl[:] = base + row * 0.1
            mujoco.mj_step(model, data, nstep=substeps)
            if data.qpos[2] < 0.4 and model.nu == 29:  # a fallen G1 starts again, as the envs do
                mujoco.mj_setState(model, data, start_state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        steps += 256
    rate = steps / (time.perf_counter() - started)
    task.close()
    return rate


def worker_rate(env_id: str, workers: int, envs_per_worker: int, steps: int, repeats: int) -> tuple[float, float]:
    """(control steps/s, fraction of worker time spent in policy inference)."""
    task = envs.TASKS[env_id](1, 0)
    spec = PolicySpec(task.observation_dim, task.critic_dim, task.action_dim, (128, 128))
    task.close()
    group = RolloutGroup(env_id, workers, envs_per_worker, 0, {}, spec, pin_threads=True)
    state = spec.build().state_dict()
    try:
        group.collect(state, 5)  # warm-up: imports, first allocations
        rates, policy_fractions = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            collected = group.collect(state, steps)
            rates.append(collected.batch.num_steps / (time.perf_counter() - started))
            policy_fractions.append(collected.policy_seconds / collected.worker_seconds)
    finally:
        group.shutdown()
    return float(np.median(rates)), float(np.mean(policy_fractions))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)

    limit_threads()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    cores = int(ray.cluster_resources()["CPU"])
    rows, records = [], []
    for name, (env_id, envs_per_worker) in CASES.items():
        raw = raw_limit(env_id, args.raw_seconds)
        one, _ = worker_rate(env_id, 1, envs_per_worker, args.steps, args.repeats)
        two, policy_two = worker_rate(env_id, 2, envs_per_worker, args.steps, args.repeats)
        limit = raw * cores
        rows.append((name, envs_per_worker, f"{raw:,.0f}", f"{limit:,.0f}", f"{one:,.0f}", f"{two:,.0f}", f"{two / limit:.3f}",
                     f"{two / one:.2f}", f"{policy_two:.1%}"))
        records.append({"benchmark": "rollout_throughput", "env": env_id, "value": round(two, 1), "baseline": round(limit, 1),
                        "ratio": round(two / limit, 4), "unit": "control steps/s"})
    ray.shutdown()

    header = ("robot", "envs/worker", "raw mj_step (1 core)", f"limit (x{cores})", "1 worker", "2 workers", "2w / limit",
              "2w / 1w", "policy time")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"control steps/s, {args.steps} steps per collect, "
          f"median of {args.repeats}; OMP threads {os.environ.get('OMP_NUM_THREADS')}")
    for row in [header, *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))
    print(json.dumps(min(records, key=lambda r: r["ratio"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
