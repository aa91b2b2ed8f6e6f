"""Franka Panda reach and pick-cube on Playground's Panda scene (Menagerie model, a cube, a target).

Control follows Playground's PandaPickCube: 50 Hz, 4 physics steps of 5 ms. Three action modes:
- `joint` (Playground's): each action moves the position actuators' targets by
  `action_scale * a` (clipped to their ranges);
- `ee`: an end-effector position delta `ee_step * a[:3]` (metres per control step) turned into
  joint-target deltas by differential inverse kinematics, and (pick-cube) an absolute gripper
  command a[3] (+1 open, -1 closed). These actions compose linearly, so demonstrations in this
  mode can be re-timed (`workloads.tempovla.vsta`);
- `joint_velocity`: arm joint velocities `joint_velocity_limit * a[:7]` (rad/s, held for one
  control step, so the targets move by that times `ctrl_dt`) and the same absolute gripper
  command; these compose linearly too.
With `image_size` > 0 (pick-cube) the observation ends with a frame from a fixed front camera
(what an image-based policy reads; rendering needs OpenGL, e.g. MUJOCO_GL=egl).
`tracking_gap()` (both composable modes) is how far the gripper's motion over the last step fell
from the commanded one (in joint-velocity mode: the gripper motion the commanded joint deltas
give by forward kinematics).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.assets import scene_path
from envs.base import MujocoTask
from envs.mujoco_batch import MujocoBatch, load_model

ARM_JOINTS = 7
ACTION_MODES = ("joint", "ee", "joint_velocity")
CARTESIAN_MODES = ("ee", "joint_velocity")  # modes with a gripper command and a tracking gap
BOX_QPOS = slice(9, 16)  # after 7 arm joints and 2 finger joints
BOX_QVEL = slice(9, 15)


@dataclasses.dataclass
class ArmControl:
    """How actions drive the arm (both Panda tasks)."""

    action_mode: str = "joint"  # joint (targets move by action_scale * a), ee (end-effector deltas) or joint_velocity
    action_scale: float = 0.04  # joint mode: radians of target per unit action
    ee_step: float = 0.01  # ee mode: metres of gripper motion per control step at |a| = 1
    ik_damping: float = 0.05  # ee mode: damped least squares' lambda
    posture_gain: float = 0.2  # ee mode: null-space pull toward the home posture per step
    joint_velocity_limit: float = 1.0  # joint_velocity mode: rad/s of each arm joint at |a| = 1


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

    def site_motion(self, qpos: np.ndarray, joint_deltas: np.ndarray) -> np.ndarray:
        """(N, 3) how far the site moves when the arm's joints move by `joint_deltas` (forward kinematics)."""
        import mujoco

        out = np.zeros((len(qpos), 3))
        for i in range(len(qpos)):
            for sign, q in ((-1.0, qpos[i]), (1.0, np.r_[qpos[i, :ARM_JOINTS] + joint_deltas[i], qpos[i, ARM_JOINTS:]])):
                self.data.qpos[:] = q
                mujoco.mj_kinematics(self.model, self.data)
                out[i] += sign * self.data.site_xpos[self.site]
        return out


class PandaTask(MujocoTask):
    ctrl_dt = 0.02
    home_key = 0
    joint_action_dim: int  # actions in joint mode
    has_fingers: bool  # whether the task drives the fingers

    @property
    def action_dim(self) -> int:
        mode = self.params.action_mode
        return {"ee": 3 + self.has_fingers, "joint_velocity": ARM_JOINTS + self.has_fingers}.get(mode, self.joint_action_dim)

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
        elif self.params.action_mode == "joint_velocity":
            deltas = self.params.joint_velocity_limit * self.ctrl_dt * actions[:, :ARM_JOINTS].astype(np.float64)
            self.ee_command = self.ik.site_motion(self.sim.qpos, deltas)
            self.ee_start = self.gripper.copy()
            self.ctrl[:, :ARM_JOINTS] += deltas
        if self.params.action_mode in CARTESIAN_MODES:
            if self.has_fingers:
                self.ctrl[:, ARM_JOINTS] = self.ctrl_high[ARM_JOINTS] * (actions[:, -1] + 1) / 2
        else:
            self.ctrl[:, : actions.shape[1]] += self.params.action_scale * actions
        np.clip(self.ctrl, self.ctrl_low, self.ctrl_high, out=self.ctrl)
        return self.ctrl

    def _after_physics(self) -> None:
        if self.params.action_mode in CARTESIAN_MODES:
            self.ee_reached = self.gripper - self.ee_start

    def tracking_gap(self) -> np.ndarray:
        """(N,) metres between the commanded end-effector delta of the last step and the motion reached (ee and joint_velocity modes)."""
        return np.linalg.norm(self.ee_command - self.ee_reached, axis=1)

    def step_metrics(self) -> dict[str, np.ndarray]:
        if self.params.action_mode not in CARTESIAN_MODES:
            return {}
        return {"tracking_gap_mm": 1000 * self.tracking_gap(), "ee_commanded_mm": 1000 * np.linalg.norm(self.ee_command, axis=1)}

    @property
    def gripper(self) -> np.ndarray:
        return self.sim.sensor("gripper_pos")

    def show_in_render(self, data, env: int) -> None:
        data.mocap_pos[0] = self.target[env]  # the scene's translucent target box

    def sample_in_box(self, low, high, n: int) -> np.ndarray:
        return self.rng.uniform(low, high, (n, 3))

    @staticmethod
    def front_camera():
        """A fixed camera looking at the table from the front-left, the cube and the target in view."""
        import mujoco

        camera = mujoco.MjvCamera()
        camera.lookat[:], camera.distance, camera.azimuth, camera.elevation = (0.5, 0.0, 0.15), 1.2, 135.0, -40.0
        return camera

    def camera_frames(self, size: int, envs: np.ndarray | None = None) -> np.ndarray:
        """(N, size, size, 3) uint8: every environment seen from `front_camera()` (only `envs`
        rendered when given, the others left black)."""
        renderer = getattr(self, "_camera_renderer", None)
        if renderer is None or renderer.height != size:
            import mujoco

            renderer = self._camera_renderer = mujoco.Renderer(self.sim.model, size, size)
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0  # four fifths of a frame under software OpenGL
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        camera, frames = self.front_camera(), np.zeros((self.num_envs, size, size, 3), dtype=np.uint8)
        for env in range(self.num_envs) if envs is None else np.flatnonzero(envs):
            frames[env] = self.render(env, renderer, camera)
        return frames

    def close(self) -> None:
        if getattr(self, "_camera_renderer", None) is not None:
            self._camera_renderer.close()
        super().close()


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
    image_size: int = 0  # > 0: the observation ends with a front camera frame (size x size x 3 values in [0, 255]; needs OpenGL)


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

    def state_observe(self) -> np.ndarray:
        """The observation without the camera frame."""
        q, v = self.sim.qpos, self.sim.qvel
        return np.concatenate([q[:, :9], v[:, :9], self.gripper, self.box, self.box - self.gripper, self.target - self.box,
                               q[:, BOX_QPOS.start + 3 : BOX_QPOS.stop], self.last_action], axis=1).astype(np.float32)

    def observe(self) -> np.ndarray:
        state = self.state_observe()
        if not self.params.image_size:
            return state
        frames = self.camera_frames(self.params.image_size).reshape(self.num_envs, -1)
        return np.concatenate([state, frames.astype(np.float32)], axis=1)

    def critic_observe(self) -> np.ndarray:
        return np.concatenate([self.state_observe(), self.reached[:, None], self.sim.qvel[:, BOX_QVEL]], axis=1).astype(np.float32)

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
