"""Franka Panda reach and pick-cube on Playground's Panda scene (Menagerie model, a cube, a target).

Control follows Playground's PandaPickCube: 50 Hz, 4 physics steps of 5 ms. Two action modes:
- `joint` (Playground's): each action moves the position actuators' targets by
  `action_scale * a` (clipped to their ranges);
- `ee`: an end-effector position delta `ee_step * a[:3]` (metres per control step) turned into
  joint-target deltas by differential inverse kinematics, and (pick-cube) an absolute gripper
  command a[3] (+1 open, -1 closed). These actions compose linearly, so demonstrations in this
  mode can be re-timed (`workloads.tempovla.vsta`); `tracking_gap()` is how far the gripper's
  motion over the last step fell from the commanded delta.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.assets import scene_path
from envs.base import MujocoTask
from envs.mujoco_batch import MujocoBatch, load_model

ARM_JOINTS = 7
ACTION_MODES = ("joint", "ee")
BOX_QPOS = slice(9, 16)  # after 7 arm joints and 2 finger joints
BOX_QVEL = slice(9, 15)


@dataclasses.dataclass
class ArmControl:
    """How actions drive the arm (both Panda tasks)."""

    action_mode: str = "joint"  # joint (targets move by action_scale * a) or ee (end-effector deltas)
    action_scale: float = 0.04  # joint mode: radians of target per unit action
    ee_step: float = 0.01  # ee mode: metres of gripper motion per control step at |a| = 1
    ik_damping: float = 0.05  # ee mode: damped least squares' lambda
    posture_gain: float = 0.2  # ee mode: null-space pull toward the home posture per step


class DifferentialIK:
    """End-effector position deltas -> arm joint deltas: damped least squares on the gripper
    site's positional Jacobian, dq = J^T (J J^T + lambda^2 I)^-1 dx, plus a null-space pull
    toward the home posture so the redundant degree of freedom does not drift."""

    def __init__(self, model, site: str, damping: float, posture_gain: float, home: np.ndarray):
        import mujoco

        self.model, self.data = model, mujoco.MjData(model)
        self.site, self.damping, self.gain, self.home = model.site(site).id, damping, posture_gain, home[:ARM_JOINTS]
        self.jacp = np.zeros((3, model.nv))

    def joint_deltas(self, qpos: np.ndarray, delta: np.ndarray) -> np.ndarray:
        import mujoco

        out = np.zeros((len(qpos), ARM_JOINTS))
        for i in range(len(qpos)):
            self.data.qpos[:] = qpos[i]
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self.jacp, None, self.site)
            jac = self.jacp[:, :ARM_JOINTS]
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + self.damping**2 * np.eye(3))
            null = np.eye(ARM_JOINTS) - pinv @ jac
            out[i] = pinv @ delta[i] + self.gain * null @ (self.home - qpos[i, :ARM_JOINTS])
        return out


class PandaTask(MujocoTask):
    ctrl_dt = 0.02
    home_key = 0
    joint_action_dim: int  # actions in joint mode
    has_fingers: bool  # whether the task drives the fingers

    @property
    def action_dim(self) -> int:
        return (3 + self.has_fingers) if self.params.action_mode == "ee" else self.joint_action_dim

    def _build_sim(self) -> MujocoBatch:
        if self.params.action_mode not in ACTION_MODES:
            raise ValueError(f"{self.name}: action_mode must be one of {', '.join(ACTION_MODES)}, got {self.params.action_mode!r}")
        model = load_model(scene_path("panda_cube"), [("gripper_pos", "framepos", "gripper")])
        self.ctrl_low, self.ctrl_high = model.actuator_ctrlrange[:, 0].copy(), model.actuator_ctrlrange[:, 1].copy()
        self.home_qpos, self.home_ctrl = model.key_qpos[self.home_key].copy(), model.key_ctrl[self.home_key].copy()
        self.ctrl = np.tile(self.home_ctrl, (self.num_envs, 1))
        self.target = np.zeros((self.num_envs, 3))
        self.ik = DifferentialIK(model, "gripper", self.params.ik_damping, self.params.posture_gain, self.home_qpos)
        self.ee_command, self.ee_reached, self.ee_start = (np.zeros((self.num_envs, 3)) for _ in range(3))
        return MujocoBatch(model, self.num_envs, round(self.ctrl_dt / model.opt.timestep))

    def _reset_arm(self, envs: np.ndarray) -> np.ndarray:
        """Home pose with the arm's joints perturbed; returns qpos rows (the cube at its key pose)."""
        qpos = np.tile(self.home_qpos, (len(envs), 1))
        qpos[:, :ARM_JOINTS] += self.rng.uniform(-self.params.joint_noise, self.params.joint_noise, (len(envs), ARM_JOINTS))
        self.ctrl[envs] = self.home_ctrl
        self.ctrl[envs, :ARM_JOINTS] = qpos[:, :ARM_JOINTS]
        return qpos

    def _control(self, actions: np.ndarray) -> np.ndarray:
        if self.params.action_mode == "ee":
            self.ee_command = self.params.ee_step * actions[:, :3].astype(np.float64)
            self.ee_start = self.gripper.copy()
            self.ctrl[:, :ARM_JOINTS] += self.ik.joint_deltas(self.sim.qpos, self.ee_command)
            if self.has_fingers:
                self.ctrl[:, ARM_JOINTS] = self.ctrl_high[ARM_JOINTS] * (actions[:, 3] + 1) / 2
        else:
            self.ctrl[:, : actions.shape[1]] += self.params.action_scale * actions
        np.clip(self.ctrl, self.ctrl_low, self.ctrl_high, out=self.ctrl)
        return self.ctrl

    def _after_physics(self) -> None:
        if self.params.action_mode == "ee":
            self.ee_reached = self.gripper - self.ee_start

    def tracking_gap(self) -> np.ndarray:
        """(N,) metres between the commanded end-effector delta of the last step and the motion reached (ee mode)."""
        return np.linalg.norm(self.ee_command - self.ee_reached, axis=1)

    def step_metrics(self) -> dict[str, np.ndarray]:
        if self.params.action_mode != "ee":
            return {}
        return {"tracking_gap_mm": 1000 * self.tracking_gap(), "ee_commanded_mm": 1000 * np.linalg.norm(self.ee_command, axis=1)}

    @property
    def gripper(self) -> np.ndarray:
        return self.sim.sensor("gripper_pos")

    def show_in_render(self, data, env: int) -> None:
        data.mocap_pos[0] = self.target[env]  # the scene's translucent target box

    def sample_in_box(self, low, high, n: int) -> np.ndarray:
        return self.rng.uniform(low, high, (n, 3))


@dataclasses.dataclass
class ReachParams(ArmControl):
    joint_noise: float = 0.1
    target_low: tuple[float, float, float] = (0.3, -0.3, 0.15)
    target_high: tuple[float, float, float] = (0.6, 0.3, 0.55)
    success_distance: float = 0.05
    reach_scale: float = 1.0
    success_scale: float = 1.0
    action_rate_scale: float = -0.01
    episode_steps: int = 100


class PandaReach(PandaTask):
    """Bring the gripper site to a random target point; the fingers stay open."""

    name = "PandaReach"
    Params = ReachParams
    joint_action_dim, has_fingers = ARM_JOINTS, False

    @property
    def episode_steps(self) -> int:
        return self.params.episode_steps

    def _reset_envs(self, envs: np.ndarray) -> None:
        qpos = self._reset_arm(envs)
        self.target[envs] = self.sample_in_box(self.params.target_low, self.params.target_high, len(envs))
        self.sim.set_state(envs, qpos, np.zeros((len(envs), self.sim.model.nv)))

    def distance(self) -> np.ndarray:
        return np.linalg.norm(self.target - self.gripper, axis=1)

    def observe(self) -> np.ndarray:
        q, v = self.sim.qpos[:, :ARM_JOINTS], self.sim.qvel[:, :ARM_JOINTS]
        return np.concatenate([q, v, self.gripper, self.target, self.target - self.gripper, self.last_action],
                              axis=1).astype(np.float32)

    def critic_observe(self) -> np.ndarray:
        return np.concatenate([self.observe(), self.distance()[:, None].astype(np.float32)], axis=1)

    def reward_terms(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        p, distance = self.params, self.distance()
        return {"reach": p.reach_scale * (1 - np.tanh(5 * distance)),
                "success": p.success_scale * (distance < p.success_distance),
                "action_rate": p.action_rate_scale * np.sum((actions - self.last_action) ** 2, axis=1)}

    def terminated(self) -> np.ndarray:
        return np.zeros(self.num_envs, dtype=bool)

    def success(self) -> np.ndarray:
        return self.distance() < self.params.success_distance


@dataclasses.dataclass
class PickCubeParams(ArmControl):
    joint_noise: float = 0.1
    box_xy_range: float = 0.2  # the cube starts at (0.5, 0) +- this
    target_low: tuple[float, float, float] = (0.3, -0.2, 0.2)
    target_high: tuple[float, float, float] = (0.7, 0.2, 0.4)
    success_distance: float = 0.05
    reach_distance: float = 0.012  # the gripper "has reached" the cube once this close
    # Playground's PandaPickCube scales
    gripper_box_scale: float = 4.0
    box_target_scale: float = 8.0
    no_floor_collision_scale: float = 0.25
    robot_target_qpos_scale: float = 0.3
    episode_steps: int = 150
    stop_on_success: bool = False  # end the episode once the cube is at the target (time-to-success is then its length)


class PandaPickCube(PandaTask):
    """Pick up the cube and carry it to a random target point (Playground's reward recipe)."""

    name = "PandaPickCube"
    Params = PickCubeParams
    joint_action_dim, has_fingers = ARM_JOINTS + 1, True  # the fingers' actuator too

    @property
    def episode_steps(self) -> int:
        return self.params.episode_steps

    def _build_sim(self) -> MujocoBatch:
        sim = super()._build_sim()
        self.reached = np.zeros(self.num_envs, dtype=bool)
        return sim

    def _reset_envs(self, envs: np.ndarray) -> None:
        p = self.params
        qpos = self._reset_arm(envs)
        qpos[:, BOX_QPOS.start : BOX_QPOS.start + 2] = np.array([0.5, 0.0]) + self.rng.uniform(-p.box_xy_range, p.box_xy_range, (len(envs), 2))
        self.target[envs] = self.sample_in_box(p.target_low, p.target_high, len(envs))
        self.reached[envs] = False
        self.sim.set_state(envs, qpos, np.zeros((len(envs), self.sim.model.nv)))

    @property
    def box(self) -> np.ndarray:
        return self.sim.qpos[:, BOX_QPOS.start : BOX_QPOS.start + 3]

    def _after_physics(self) -> None:
        super()._after_physics()
        self.reached |= np.linalg.norm(self.box - self.gripper, axis=1) < self.params.reach_distance

    def observe(self) -> np.ndarray:
        q, v = self.sim.qpos, self.sim.qvel
        return np.concatenate([q[:, :9], v[:, :9], self.gripper, self.box, self.box - self.gripper, self.target - self.box,
                               q[:, BOX_QPOS.start + 3 : BOX_QPOS.stop], self.last_action], axis=1).astype(np.float32)

    def critic_observe(self) -> np.ndarray:
        return np.concatenate([self.observe(), self.reached[:, None], self.sim.qvel[:, BOX_QVEL]], axis=1).astype(np.float32)

    def reward_terms(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        p, sim = self.params, self.sim
        floor_contact = sum(sim.sensor(name)[:, 0] > 0 for name in
                            ("left_finger_pad_floor_found", "right_finger_pad_floor_found", "hand_capsule_floor_found"))
        return {"gripper_box": p.gripper_box_scale * (1 - np.tanh(5 * np.linalg.norm(self.box - self.gripper, axis=1))),
                "box_target": p.box_target_scale * self.reached * (1 - np.tanh(5 * np.linalg.norm(self.target - self.box, axis=1))),
                "no_floor_collision": p.no_floor_collision_scale * (floor_contact == 0),
                "robot_target_qpos": p.robot_target_qpos_scale * (1 - np.tanh(np.linalg.norm(
                    sim.qpos[:, :ARM_JOINTS] - self.home_qpos[:ARM_JOINTS], axis=1)))}

    def terminated(self) -> np.ndarray:
        failed = (np.abs(self.box) > 1.0).any(axis=1) | (self.box[:, 2] < 0.0) | ~np.isfinite(self.sim.qpos).all(axis=1)
        return failed | (self.success() if self.params.stop_on_success else False)

    def success(self) -> np.ndarray:
        return np.linalg.norm(self.target - self.box, axis=1) < self.params.success_distance
