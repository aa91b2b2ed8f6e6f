"""What whole-body collisions cost: control steps/s of the one HANDOFF robot (Menagerie's G1 with
a collider on every link, driven as Playground's) against Playground's feet-only G1, the model
the velocity task used before.

    python -m benchmarks.g1_collisions [--envs 64] [--steps 300] [--repeats 3]

Both step N robots with `MujocoBatch` (`mujoco.rollout`, one thread), 10 physics substeps per
control step, holding the default pose plus the same seeded random offsets (0.25 rad), and
reset to the default pose when a robot falls (pelvis below 0.4 m), as the environments do. Also
reported, for the robot with collisions only: robots lying on the floor (recovery's starts), where
every link touches it. Value = handoff robot's steps/s standing; baseline = feet-only's.
"""

from __future__ import annotations

import argparse
import json
import time

import mujoco
import numpy as np

from envs.assets import scene_path
from envs.g1 import fallen_bank, handoff_model
from envs.mujoco_batch import MujocoBatch


def rate(model: mujoco.MjModel, start: np.ndarray, envs: int, steps: int, seed: int, reset_falls: bool) -> float:
    """Control steps/s over `steps` control steps of `envs` robots starting from `start` rows."""
    batch = MujocoBatch(model, envs, 10)
    nq = model.nq
    batch.set_state(np.arange(envs), start[:, :nq], start[:, nq:])
    default = model.key_qpos[model.key("knees_bent").id][7:]
    offsets = np.random.default_rng(seed).normal(0, 0.25, (steps, envs, model.nu))
    started = time.perf_counter()
    for t in range(steps):
        batch.step(default + offsets[t])
        if reset_falls:
            fallen = np.flatnonzero(batch.qpos[:, 2] < 0.4)
            if len(fallen):
                batch.set_state(fallen, start[fallen, :nq], start[fallen, nq:])
    seconds = time.perf_counter() - started
    batch.close()
    return envs * steps / seconds


def standing_rows(model: mujoco.MjModel, envs: int) -> np.ndarray:
    qpos = model.key_qpos[model.key("knees_bent").id]
    return np.tile(np.concatenate([qpos, np.zeros(model.nv)]), (envs, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    handoff = handoff_model()
    feet_only = mujoco.MjModel.from_xml_path(str(scene_path("g1_feet_only")))
    bank = fallen_bank(96, 1.5, 0)
    lying = bank[np.arange(args.envs) % len(bank)]
    rows = {"feet-only G1 (Playground), standing": [], "handoff G1 (whole-body), standing": [],
            "handoff G1 (whole-body), lying": []}
    rate(handoff, standing_rows(handoff, args.envs), args.envs, 20, 0, True)  # warm-up: page in both models
    rate(feet_only, standing_rows(feet_only, args.envs), args.envs, 20, 0, True)
    for repeat in range(args.repeats):  # interleaved, so drift in the machine's speed hits both alike
        rows["feet-only G1 (Playground), standing"].append(rate(feet_only, standing_rows(feet_only, args.envs), args.envs, args.steps, repeat, True))
        rows["handoff G1 (whole-body), standing"].append(rate(handoff, standing_rows(handoff, args.envs), args.envs, args.steps, repeat, True))
        rows["handoff G1 (whole-body), lying"].append(rate(handoff, lying, args.envs, args.steps, repeat, False))
    print(f"{'model':40s}  {'control steps/s (median of ' + str(args.repeats) + ')':>34s}")
    for name, values in rows.items():
        print(f"{name:40s}  {np.median(values):34.0f}")
    value = float(np.median(rows["handoff G1 (whole-body), standing"]))
    baseline = float(np.median(rows["feet-only G1 (Playground), standing"]))
    print(json.dumps({"benchmark": "g1_collisions", "value": round(value, 1), "baseline": round(baseline, 1),
                      "ratio": round(value / baseline, 3), "unit": f"control steps/s, {args.envs} G1s standing, one core"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
