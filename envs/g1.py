"""Unitree G1 locomotion specialists: velocity tracking and fall recovery.

Both run at 50 Hz over 2 ms physics (10 substeps); an action a in [-1, 1]^29 sends
`default_pose + action_scale * a` to the 29 position actuators.

- `G1Velocity` uses Playground's feet-only G1 scene and a reward after Playground's G1
  joystick recipe: exponential velocity-tracking kernels, orientation, angular velocity,
  feet air time, slip and phase, pose, action rate, termination; the weighted sum times dt is
  clipped at 0 as Playground does, so staying up is always worth something. Commands are
  resampled, pushes and domain randomisation (floor friction, link masses) are parameters.
- `G1Recovery` uses Menagerie's G1 with whole-body collisions: episodes start from a bank of
  fallen states (the robot dropped in a random orientation and left to settle), and the
  reward pays for a high, upright torso that is still.
"""

from __future__ import annotations

import copy
import dataclasses

import mujoco
import numpy as np

from envs.assets import scene_path
from envs.base import MujocoTask
from envs.mujoco_batch import MujocoBatch, load_model, quaternion_multiply, random_quaternion, rotate_inverse, yaw_quaternion

NUM_JOINTS = 29
DOWN = np.array([0.0, 0.0, -1.0])
FEET = ("left_foot", "right_foot")


class G1Task(MujocoTask):
    ctrl_dt = 0.02
    action_dim = NUM_JOINTS
    scene = ""
    default_key = ""
    sensors: tuple = ()

    def _build_sim(self) -> MujocoBatch:
        model = load_model(scene_path(self.scene), self.sensors)
        key = model.key(self.default_key).id
        self.default_qpos = model.key_qpos[key].copy()
        self.default_pose = self.default_qpos[7:].copy()
        self.joint_low, self.joint_high = model.jnt_range[1:, 0].copy(), model.jnt_range[1:, 1].copy()
        variants = self._variants(model)
        sim = MujocoBatch(model, self.num_envs, round(self.ctrl_dt / model.opt.timestep), variants)
        return sim

    def _variants(self, model: mujoco.MjModel) -> list[mujoco.MjModel]:
        return [model]

    def _control(self, actions: np.ndarray) -> np.ndarray:
        return self.default_pose + self.params.action_scale * actions

    # the base's orientation and velocities, from the free joint (angular velocity is local)
    @property
    def gravity(self) -> np.ndarray:
        return rotate_inverse(self.sim.qpos[:, 3:7], DOWN)

    @property
    def gyro(self) -> np.ndarray:
        return self.sim.qvel[:, 3:6]

    @property
    def local_linvel(self) -> np.ndarray:
        return rotate_inverse(self.sim.qpos[:, 3:7], self.sim.qvel[:, 0:3])

    @property
    def height(self) -> np.ndarray:
        return self.sim.qpos[:, 2]

    def joints(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sim.qpos[:, 7:] - self.default_pose, self.sim.qvel[:, 6:]


@dataclasses.dataclass
class VelocityParams:
    action_scale: float = 0.5
    episode_steps: int = 1000  # 20 s
    lin_vel_x: tuple[float, float] = (-1.0, 1.0)
    lin_vel_y: tuple[float, float] = (-0.5, 0.5)
    ang_vel_yaw: tuple[float, float] = (-1.0, 1.0)
    zero_command_probability: float = 0.1
    command_resample_steps: int = 500
    gait_frequency: tuple[float, float] = (1.25, 1.5)
    foot_height: float = 0.12
    push_interval_steps: int = 0  # 0: no pushes
    push_speed: tuple[float, float] = (0.1, 1.0)  # m/s added to the base, in a random horizontal direction
    randomize: bool = False
    model_variants: int = 8
    floor_friction: tuple[float, float] = (0.4, 1.0)
    mass_scale: tuple[float, float] = (0.9, 1.1)
    fall_gravity_z: float = -0.5  # terminate once the base's "down" points less than this much down
    fall_height: float = 0.4
    tracking_sigma: float = 0.25
    # reward scales (Playground's G1 joystick recipe, trimmed to the terms above)
    tracking_lin_vel: float = 1.0
    tracking_ang_vel: float = 0.75
    ang_vel_xy: float = -0.15
    orientation: float = -2.0
    feet_air_time: float = 2.0
    feet_slip: float = -0.25
    feet_phase: float = 1.0
    pose: float = -0.1
    action_rate: float = -0.01
    termination: float = -100.0
    alive: float = 1.0  # not in Playground's recipe (0 there): short runs on 2 cores learn to stay up first


class G1Velocity(G1Task):
    name = "G1Velocity"
    Params = VelocityParams
    scene = "g1_feet_only"
    default_key = "knees_bent"
    sensors = (("left_foot_pos", "framepos", "left_foot"), ("right_foot_pos", "framepos", "right_foot"))

    @property
    def episode_steps(self) -> int:
        return self.params.episode_steps

    def _build_sim(self) -> MujocoBatch:
        n = self.num_envs
        self.command = np.zeros((n, 3))
        self.phase = np.zeros((n, 2))
        self.phase_step = np.zeros(n)
        self.air_time = np.zeros((n, 2))
        self.last_contact = np.zeros((n, 2), dtype=bool)
        self.first_contact = np.zeros((n, 2), dtype=bool)
        self.landed_air_time = np.zeros((n, 2))  # how long a foot was in the air, on the step it lands
        return super()._build_sim()

    def _variants(self, model: mujoco.MjModel) -> list[mujoco.MjModel]:
        p = self.params
        if not p.randomize:
            return [model]
        rng = np.random.default_rng(self.rng.integers(2**31))
        floor = model.geom("floor").id
        variants = []
        for _ in range(p.model_variants):
            variant = copy.copy(model)
            variant.geom_friction[floor, 0] = rng.uniform(*p.floor_friction)
            variant.body_mass[1:] = model.body_mass[1:] * rng.uniform(*p.mass_scale, model.nbody - 1)
            variants.append(variant)
        return variants

    def _sample_commands(self, envs: np.ndarray) -> None:
        p, n = self.params, len(envs)
        command = np.stack([self.rng.uniform(*p.lin_vel_x, n), self.rng.uniform(*p.lin_vel_y, n),
                            self.rng.uniform(*p.ang_vel_yaw, n)], axis=1)
        command[self.rng.random(n) < p.zero_command_probability] = 0.0
        self.command[envs] = command

    def _reset_envs(self, envs: np.ndarray) -> None:
        n, p = len(envs), self.params
        qpos = np.tile(self.default_qpos, (n, 1))
        qpos[:, 0:2] += self.rng.uniform(-0.5, 0.5, (n, 2))
        qpos[:, 3:7] = quaternion_multiply(yaw_quaternion(self.rng.uniform(-np.pi, np.pi, n)), qpos[:, 3:7])
        qpos[:, 7:] = np.clip(qpos[:, 7:] * self.rng.uniform(0.5, 1.5, (n, NUM_JOINTS)), self.joint_low, self.joint_high)
        qvel = np.zeros((n, self.sim.model.nv))
        qvel[:, 0:6] = self.rng.uniform(-0.5, 0.5, (n, 6))
        if p.randomize:
            self.sim.assign_variants(envs, self.rng.integers(len(self.sim.variants), size=n))
        self.sim.set_state(envs, qpos, qvel)
        self._sample_commands(envs)
        self.phase[envs] = np.array([0.0, np.pi])
        self.phase_step[envs] = 2 * np.pi * self.ctrl_dt * self.rng.uniform(*p.gait_frequency, n)
        self.air_time[envs] = 0.0
        self.last_contact[envs] = False
        self.first_contact[envs] = False
        self.landed_air_time[envs] = 0.0

    def contact(self) -> np.ndarray:
        return np.stack([self.sim.sensor(f"{foot}_floor_found")[:, 0] > 0 for foot in FEET], axis=1)

    def foot_heights(self) -> np.ndarray:
        return np.stack([self.sim.sensor(f"{foot}_pos")[:, 2] for foot in FEET], axis=1)

    def _after_physics(self) -> None:
        p = self.params
        self.phase = np.fmod(self.phase + self.phase_step[:, None] + np.pi, 2 * np.pi) - np.pi
        contact = self.contact()
        touched = contact | self.last_contact  # a filtered contact, as Playground does
        self.first_contact = (self.air_time > 0.0) & touched
        self.air_time += self.ctrl_dt
        self.landed_air_time = np.where(self.first_contact, self.air_time, 0.0)
        self.air_time[touched] = 0.0
        self.last_contact = contact
        resample = np.flatnonzero(self.steps % p.command_resample_steps == 0)
        if len(resample):
            self._sample_commands(resample)
        if p.push_interval_steps > 0:
            pushed = np.flatnonzero(self.steps % p.push_interval_steps == 0)
            if len(pushed):
                angle = self.rng.uniform(0, 2 * np.pi, len(pushed))
                speed = self.rng.uniform(*p.push_speed, len(pushed))
                self.sim.qvel[pushed, 0] += speed * np.cos(angle)
                self.sim.qvel[pushed, 1] += speed * np.sin(angle)

    def observe(self) -> np.ndarray:
        position, velocity = self.joints()
        phase = np.concatenate([np.cos(self.phase), np.sin(self.phase)], axis=1)
        return np.concatenate([self.gyro, self.gravity, self.command, position, velocity, self.last_action, phase],
                              axis=1).astype(np.float32)

    def critic_observe(self) -> np.ndarray:
        return np.concatenate([self.observe(), self.local_linvel, self.height[:, None], self.contact(), self.air_time,
                               self.foot_heights()], axis=1).astype(np.float32)

    def reward_terms(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        p = self.params
        linvel, gyro, gravity = self.local_linvel, self.gyro, self.gravity
        moving = np.linalg.norm(self.command, axis=1) > 0.1
        contact = self.contact()
        foot_speed = np.stack([np.sum(self.sim.sensor(f"{foot}_global_linvel")[:, :2] ** 2, axis=1) for foot in FEET], axis=1)
        swing_height = p.foot_height * np.maximum(0.0, np.sin(self.phase))  # a foot swings while its phase is in (0, pi)
        position, _ = self.joints()
        terms = {
            "tracking_lin_vel": p.tracking_lin_vel * np.exp(-np.sum((self.command[:, :2] - linvel[:, :2]) ** 2, axis=1) / p.tracking_sigma),
            "tracking_ang_vel": p.tracking_ang_vel * np.exp(-(self.command[:, 2] - gyro[:, 2]) ** 2 / p.tracking_sigma),
            "ang_vel_xy": p.ang_vel_xy * np.sum(gyro[:, :2] ** 2, axis=1),
            "orientation": p.orientation * np.sum(gravity[:, :2] ** 2, axis=1),
            "feet_air_time": p.feet_air_time * np.sum(self.landed_air_time - 0.2 * self.first_contact, axis=1) * moving,
            "feet_slip": p.feet_slip * np.sum(foot_speed * contact, axis=1),
            "feet_phase": p.feet_phase * np.exp(-np.sum((self.foot_heights() - swing_height) ** 2, axis=1) / 0.01) * moving,
            "pose": p.pose * np.sum(position**2, axis=1),
            "action_rate": p.action_rate * np.sum((actions - self.last_action) ** 2, axis=1),
            "termination": p.termination * self.fallen(),
            "alive": p.alive * ~self.fallen(),
        }
        return {key: value * self.ctrl_dt for key, value in terms.items()}

    def combine(self, terms: dict[str, np.ndarray]) -> np.ndarray:
        return np.maximum(sum(terms.values()), 0.0)

    def fallen(self) -> np.ndarray:
        return (self.gravity[:, 2] > self.params.fall_gravity_z) | (self.height < self.params.fall_height)

    def terminated(self) -> np.ndarray:
        return self.fallen() | ~np.isfinite(self.sim.qpos).all(axis=1)

    def success(self) -> np.ndarray:
        """Tracking within 0.25 m/s and 0.25 rad/s of the command."""
        error = np.linalg.norm(self.command[:, :2] - self.local_linvel[:, :2], axis=1)
        return (error < 0.25) & (np.abs(self.command[:, 2] - self.gyro[:, 2]) < 0.25) & ~self.fallen()


@dataclasses.dataclass
class RecoveryParams:
    action_scale: float = 0.5
    episode_steps: int = 250  # 5 s
    fallen_states: int = 16  # the bank episodes start from
    settle_seconds: float = 1.5
    perturbed_fraction: float = 0.25  # the rest start upright but strongly pushed
    upright_height: float = 0.7
    # reward scales
    upright: float = 1.0
    height: float = 1.0
    still: float = 0.5
    action_rate: float = -0.01


class G1Recovery(G1Task):
    name = "G1Recovery"
    Params = RecoveryParams
    scene = "g1_full"
    default_key = "stand"

    @property
    def episode_steps(self) -> int:
        return self.params.episode_steps

    def _build_sim(self) -> MujocoBatch:
        sim = super()._build_sim()
        self.fallen_bank = self._fallen_bank(sim.model)
        return sim

    def _fallen_bank(self, model: mujoco.MjModel) -> np.ndarray:
        """(qpos, qvel) rows of the robot after a drop from a random orientation, at rest on the floor."""
        p, data = self.params, mujoco.MjData(model)
        rng = np.random.default_rng(self.rng.integers(2**31))
        bank = []
        for quat in random_quaternion(rng, p.fallen_states):
            mujoco.mj_resetData(model, data)
            data.qpos[:] = self.default_qpos
            data.qpos[2], data.qpos[3:7] = 0.9, quat
            data.qpos[7:] = np.clip(self.default_pose + rng.uniform(-0.5, 0.5, NUM_JOINTS), self.joint_low, self.joint_high)
            data.ctrl[:] = data.qpos[7:]
            mujoco.mj_step(model, data, nstep=round(p.settle_seconds / model.opt.timestep))
            bank.append(np.concatenate([data.qpos, data.qvel]))
        return np.array(bank)

    def _reset_envs(self, envs: np.ndarray) -> None:
        n, nq, p = len(envs), self.sim.model.nq, self.params
        rows = self.fallen_bank[self.rng.integers(len(self.fallen_bank), size=n)]
        qpos, qvel = rows[:, :nq].copy(), rows[:, nq:].copy()
        qpos[:, 7:] = np.clip(qpos[:, 7:] + self.rng.uniform(-0.1, 0.1, (n, NUM_JOINTS)), self.joint_low, self.joint_high)
        pushed = self.rng.random(n) < p.perturbed_fraction
        qpos[pushed], qvel[pushed] = self.default_qpos, 0.0
        qvel[pushed, 0:2] = self.rng.uniform(-2.0, 2.0, (int(pushed.sum()), 2))
        qvel[pushed, 3:6] = self.rng.uniform(-3.0, 3.0, (int(pushed.sum()), 3))
        self.sim.set_state(envs, qpos, qvel)

    def _after_physics(self) -> None:
        pass

    def observe(self) -> np.ndarray:
        position, velocity = self.joints()
        return np.concatenate([self.gyro, self.gravity, position, velocity, self.last_action], axis=1).astype(np.float32)

    def critic_observe(self) -> np.ndarray:
        return np.concatenate([self.observe(), self.height[:, None], self.local_linvel], axis=1).astype(np.float32)

    def reward_terms(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        p = self.params
        upright = np.clip(-self.gravity[:, 2], 0.0, 1.0)  # 1 when the base's z axis points up
        height = np.clip(self.height / self.default_qpos[2], 0.0, 1.0)
        terms = {"upright": p.upright * upright, "height": p.height * height,
                 "still": p.still * upright * np.exp(-np.sum(self.sim.qvel[:, :6] ** 2, axis=1)),
                 "action_rate": p.action_rate * np.sum((actions - self.last_action) ** 2, axis=1)}
        return {key: value * self.ctrl_dt for key, value in terms.items()}

    def terminated(self) -> np.ndarray:
        return ~np.isfinite(self.sim.qpos).all(axis=1)

    def success(self) -> np.ndarray:
        return (self.height > self.params.upright_height) & (-self.gravity[:, 2] > 0.9)
