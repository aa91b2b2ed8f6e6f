"""Demonstration generation: state-only frames per second written to a LeRobot v3.0 dataset by
Ray tasks on 2 workers (`pipelines.tempovla.generate_demos`), against a plain single-process
loop over the same batches (what a user would otherwise write), at equal output.

    python -m benchmarks.demo_generation [--episodes 128] [--envs-per-batch 16]

Both produce the same episodes (the same seeds, deterministic physics; checked) and both write
the dataset; the time covers simulating, the expert and writing. Before timing, each Ray
worker process is started by one untimed one-environment task (a running cluster has its
workers up); no episode is reused between the runs. The last line is the JSON record:
value = Ray tasks' frames/s, baseline = the loop's, ratio = value / baseline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def plain_loop(config, seed: int, target: Path) -> tuple[int, float]:
    """The same batches one after another in this process: (frames written, seconds)."""
    from actors.rollout import limit_threads
    from envs.panda import PandaTask
    from workloads.tempovla.demos import record_batch, write_dataset

    limit_threads()
    started = time.perf_counter()
    kept, batch = [], 0
    while len(kept) < config.episodes:
        for i in range(2):  # the batch seeds generate_demos uses with parallel=2
            episodes, _ = record_batch(config, seed * 100_003 + batch + i, {})
            kept.extend(episodes)
        batch += 2
    kept = kept[: config.episodes]
    write_dataset(target, kept, round(1 / PandaTask.ctrl_dt), {})
    return sum(len(e.actions) for e in kept), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    import ray

    from cluster.connect import connect
    from pipelines.launch import quiet_libraries
    from pipelines.tempovla import generate_demos, record_batch_task
    from workloads.config import to_dict
    from workloads.tempovla.demos import DemoConfig, read_info

    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_generation", description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=128)
    parser.add_argument("--envs-per-batch", type=int, default=16)
    args = parser.parse_args(argv)
    quiet_libraries(verbose=False)
    connect(None, None, log_to_driver=False)
    config = DemoConfig(episodes=args.episodes, envs_per_batch=args.envs_per_batch)
    scratch = Path(tempfile.mkdtemp(prefix="demo-generation-"))

    warm = ray.remote(num_cpus=1)(record_batch_task)  # starts both worker processes; untimed
    ray.get([warm.remote(to_dict(DemoConfig(episodes=1, envs_per_batch=1, max_steps=5)), 10**6 + i) for i in range(2)])

    started = time.perf_counter()
    dataset = generate_demos(config, 0, scratch / "ray", parallel=2, say_line=lambda line: None)
    ray_seconds = time.perf_counter() - started
    ray_frames = read_info(dataset)["total_frames"]
    loop_frames, loop_seconds = plain_loop(config, 0, scratch / "loop")
    if loop_frames != ray_frames:
        raise SystemExit(f"unequal output: Ray tasks wrote {ray_frames} frames, the loop {loop_frames}")

    rows = [("Ray tasks, 2 workers", ray_frames, ray_seconds), ("single-process loop", loop_frames, loop_seconds)]
    print(f"\n{args.episodes} successful PandaPickCube demonstrations, batches of {args.envs_per_batch} environments\n")
    print(f"{'generator':<24}{'frames':>10}{'seconds':>10}{'frames/s':>12}")
    for name, frames, seconds in rows:
        print(f"{name:<24}{frames:>10}{seconds:>10.2f}{frames / seconds:>12.0f}")
    value, baseline = ray_frames / ray_seconds, loop_frames / loop_seconds
    print(json.dumps({"benchmark": "demo_generation", "value": round(value, 1), "baseline": round(baseline, 1),
                      "ratio": round(value / baseline, 3), "unit": "demonstration frames written per second"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
