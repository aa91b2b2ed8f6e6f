"""A scripted demonstrator for PandaPickCube in end-effector mode (`action_mode="ee"`) or
joint-velocity mode (`action_mode="joint_velocity"`: the same end-effector motion turned into
joint velocities by the environment's own differential IK).

It reads the simulator's state (gripper, cube and target positions): it is an expert that
writes demonstrations, never a policy under evaluation. Phases, per environment: approach a
point above the cube, descend onto it, close the fingers, carry the cube to the target. Each
step moves the gripper toward the phase's point by at most `max_action` of the action bound
(half by default, so that actions merged for speed 2 stay inside it); the motion slows by
itself near a point, which is where the contact phases are.
"""

from __future__ import annotations

import dataclasses

import numpy as np

APPROACH, DESCEND, GRASP, CARRY = range(4)
PHASES = ("approach", "descend", "grasp", "carry")
OPEN, CLOSED = 1.0, -1.0


@dataclasses.dataclass
class ExpertConfig:
    max_action: float = 0.5  # largest |action| per axis norm at 1x (of the env's bound, 1)
    hover: float = 0.08  # metres above the cube's centre to approach first
    aligned: float = 0.01  # metres: close enough to a phase's point to move on
    grasp_steps: int = 10  # control steps the fingers take to close


class PickCubeExpert:
    """Vectorised over a task's environments; `reset(envs)` when they start new episodes."""

    def __init__(self, num_envs: int, ee_step: float, config: ExpertConfig | None = None):
        self.config, self.ee_step = config or ExpertConfig(), ee_step
        self.phase = np.full(num_envs, APPROACH)
        self.timer = np.zeros(num_envs, dtype=np.int64)

    def reset(self, envs: np.ndarray | None = None) -> None:
        envs = slice(None) if envs is None else envs
        self.phase[envs], self.timer[envs] = APPROACH, 0

    def point(self, task) -> np.ndarray:
        """(N, 3) where each environment's gripper should go in its current phase."""
        box, gripper = task.box, task.gripper
        above = box + np.array([0.0, 0.0, self.config.hover])
        return np.select([self.phase[:, None] == APPROACH, self.phase[:, None] == DESCEND, self.phase[:, None] == GRASP],
                         [above, box, gripper], task.target)

    def advance(self, task) -> None:
        c = self.config
        gap = np.linalg.norm(self.point(task) - task.gripper, axis=1)
        self.timer += self.phase == GRASP
        moves = ((self.phase == APPROACH) & (gap < c.aligned)) | ((self.phase == DESCEND) & (gap < c.aligned * 0.6)) \
            | ((self.phase == GRASP) & (self.timer >= c.grasp_steps))
        self.phase = np.where(moves, self.phase + 1, self.phase)

    def act(self, task) -> np.ndarray:
        """(N, 4) actions: end-effector delta in units of `ee_step`, then the gripper command; in
        joint-velocity mode (N, 8): arm joint velocities in units of `joint_velocity_limit`, then
        the gripper command. Either way no component exceeds `max_action`."""
        self.advance(task)
        motion = (self.point(task) - task.gripper) / self.ee_step
        norm = np.linalg.norm(motion, axis=1, keepdims=True)
        motion *= np.minimum(1.0, self.config.max_action / np.maximum(norm, 1e-9))
        if task.params.action_mode == "joint_velocity":
            per_unit = task.params.joint_velocity_limit * task.ctrl_dt  # radians of target per unit action
            motion = task.ik.joint_deltas(task.sim.qpos, self.ee_step * motion) / per_unit
            largest = np.abs(motion).max(axis=1, keepdims=True)
            motion *= np.minimum(1.0, self.config.max_action / np.maximum(largest, 1e-9))
        gripper = np.where(self.phase >= GRASP, CLOSED, OPEN)
        return np.concatenate([motion, gripper[:, None]], axis=1).astype(np.float32)
