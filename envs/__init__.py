"""Simulated worlds. Importing `envs` registers the Gymnasium ids:

    rayworks/G1Velocity-v0, rayworks/G1Recovery-v0, rayworks/G1Motion-v0, rayworks/PandaReach-v0, rayworks/PandaPickCube-v0

`gymnasium.make(id, **params)` gives a single environment; `gymnasium.make_vec(id, num_envs=N,
vectorization_mode="vector_entry_point", **params)` the batched one that steps all N in C.
"""

from __future__ import annotations

import functools

import gymnasium

from envs.base import BatchedEnv, MujocoTask, SingleEnv
from envs.g1 import G1Motion, G1Recovery, G1Velocity
from envs.panda import PandaPickCube, PandaReach

TASKS: dict[str, type[MujocoTask]] = {
    "rayworks/G1Velocity-v0": G1Velocity,
    "rayworks/G1Recovery-v0": G1Recovery,
    "rayworks/G1Motion-v0": G1Motion,
    "rayworks/PandaReach-v0": PandaReach,
    "rayworks/PandaPickCube-v0": PandaPickCube,
}


def make_batched(env_id: str, num_envs: int, seed: int | None = None, **params) -> BatchedEnv:
    if env_id not in TASKS:
        raise KeyError(f"unknown environment {env_id!r}; known: {', '.join(TASKS)}")
    return BatchedEnv(TASKS[env_id], num_envs, seed, **params)


def _vector_entry_point(task_cls, num_envs: int = 1, seed: int | None = None, **params) -> BatchedEnv:
    return BatchedEnv(task_cls, num_envs, seed, **params)


for _env_id, _task in TASKS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(_env_id, entry_point=functools.partial(SingleEnv, _task),
                           vector_entry_point=functools.partial(_vector_entry_point, _task), disable_env_checker=True)
