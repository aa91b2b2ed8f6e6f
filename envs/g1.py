"""Unitree G1: one robot for every humanoid task (velocity tracking, fall recovery, upper-body
motion tracking), so one controller can take over from the specialists (HANDOFF).

The robot (`handoff_model`) is Menagerie's G1 with whole-body collisions (a collider on every
link, so a fallen robot rests on its torso and arms and can push itself up), driven as
Playground's G1 joystick model is: its position-actuator gains, joint damping, armature,
friction loss and joint ranges, its solver settings (Euler, 3 iterations) and one default pose,
Playground's `knees_bent`. All tasks run at 50 Hz over 2 ms physics; an action a in [-1, 1]^29
sends `default_pose + action_scale * a` to the 29 position actuators.

Every task writes the same observation layout (`OBSERVATION_LAYOUT`): noisy proprioception as
Playground's joystick actor sees it (local linear velocity, gyro, gravity, joint positions and
velocities, last action), the gait phase, and the command block (`COMMAND_LAYOUT`: base velocity,
left / right hand targets in the pelvis frame, waist target, mode one-hot). Fields a task does
not use are zero; the mode says which task is asking.

- `G1Velocity`: Playground's G1 joystick task (its reward terms and weights, the total not
  clipped at zero so a fall costs), pushes and domain randomisation on by default.
- `G1Recovery`: episodes start from a bank of settled fallen poses, each turned to a random
  heading and perturbed, so episodes do not repeat; success = upright, pelvis high, still.
- `G1Motion`: track procedurally generated, seeded upper-body motions (reaching, waving, torso
  turns, within the joint limits) while standing or walking; the command carries the hand and
  waist targets of the reference at each step.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import os
from pathlib import Path

import mujoco
import numpy as np

from envs.assets import scene_path
from envs.base import MujocoTask
from envs.mujoco_batch import MujocoBatch, quaternion_multiply, random_quaternion, rotate_inverse, yaw_quaternion

NUM_JOINTS = 29
DOWN = np.array([0.0, 0.0, -1.0])
FEET = ("left_foot", "right_foot")
HANDS = ("left_palm", "right_palm")
MODES = ("velocity", "recovery", "motion")
COMMAND_LAYOUT = {"velocity": 3, "left_hand": 3, "right_hand": 3, "torso": 3, "mode": len(MODES)}
OBSERVATION_LAYOUT = {"linvel": 3, "gyro": 3, "gravity": 3, "joint_pos": NUM_JOINTS, "joint_vel": NUM_JOINTS,
                      "last_action": NUM_JOINTS, "phase": 4, "command": sum(COMMAND_LAYOUT.values())}
OBSERVATION_DIM = sum(OBSERVATION_LAYOUT.values())
WAIST = slice(12, 15)  # waist yaw, roll, pitch among the 29 joints
UPPER_BODY = slice(12, 29)  # waist and both arms


def _offsets(layout: dict[str, int]) -> dict[str, slice]:
    ends = np.cumsum(list(layout.values()))
    return {name: slice(int(end - size), int(end)) for (name, size), end in zip(layout.items(), ends)}


COMMAND_SLICES = _offsets(COMMAND_LAYOUT)
OBSERVATION_SLICES = _offsets(OBSERVATION_LAYOUT)


def observation_field(observations, name: str):
    """A named field of observations (..., OBSERVATION_DIM); command fields by their own names."""
    if name in COMMAND_SLICES:
        return observations[..., OBSERVATION_SLICES["command"]][..., COMMAND_SLICES[name]]
    return observations[..., OBSERVATION_SLICES[name]]


def _contact(spec: mujoco.MjSpec, name: str, body1: str, other: str, other_type=mujoco.mjtObj.mjOBJ_BODY) -> None:
    # data="found", reduce="mindist", num=1: 1 while the two touch
    spec.add_sensor(name=name, type=mujoco.mjtSensor.mjSENS_CONTACT, objtype=mujoco.mjtObj.mjOBJ_BODY, objname=body1,
                    reftype=other_type, refname=other, intprm=[1, 1, 1])


@functools.cache
def handoff_spec_xml() -> tuple[str, str]:
    """The robot's MJCF text and the directory its meshes resolve from (built once per process)."""
    spec = mujoco.MjSpec.from_file(str(scene_path("g1_full")))
    drive = mujoco.MjModel.from_xml_path(str(scene_path("g1_feet_only")))
    for joint in spec.joints:
        if joint.type == mujoco.mjtJoint.mjJNT_FREE:
            continue
        source = drive.joint(joint.name)
        dof = drive.jnt_dofadr[source.id]
        joint.range = drive.jnt_range[source.id]
        joint.damping = [drive.dof_damping[dof], 0.0, 0.0]  # (linear, and MuJoCo 4's higher-order terms)
        joint.armature, joint.frictionloss = drive.dof_armature[dof], drive.dof_frictionloss[dof]
        joint.actfrcrange = drive.jnt_actfrcrange[source.id]
    for actuator in spec.actuators:
        source = drive.actuator(actuator.name).id
        actuator.gainprm[0], actuator.biasprm[1], actuator.biasprm[2] = (drive.actuator_gainprm[source, 0],
                                                                        drive.actuator_biasprm[source, 1],
                                                                        drive.actuator_biasprm[source, 2])
        actuator.ctrlrange = drive.actuator_ctrlrange[source]
    spec.option.iterations, spec.option.ls_iterations = drive.opt.iterations, drive.opt.ls_iterations
    spec.option.integrator, spec.option.disableflags = drive.opt.integrator, drive.opt.disableflags
    for side in ("left", "right"):
        spec.body(f"{side}_wrist_yaw_link").add_site(name=f"{side}_palm", pos=[0.08, 0.0, 0.0])
    pelvis_frame = {"reftype": mujoco.mjtObj.mjOBJ_XBODY, "refname": "pelvis"}  # the body frame (BODY: its inertial frame)
    site = mujoco.mjtObj.mjOBJ_SITE
    for foot in FEET:
        spec.add_sensor(name=f"{foot}_pos", type=mujoco.mjtSensor.mjSENS_FRAMEPOS, objtype=site, objname=foot)
        spec.add_sensor(name=f"{foot}_global_linvel", type=mujoco.mjtSensor.mjSENS_FRAMELINVEL, objtype=site, objname=foot)
        spec.add_sensor(name=f"{foot}_force", type=mujoco.mjtSensor.mjSENS_FORCE, objtype=site, objname=foot)
    for hand in HANDS:
        spec.add_sensor(name=f"{hand}_pos", type=mujoco.mjtSensor.mjSENS_FRAMEPOS, objtype=site, objname=hand, **pelvis_frame)
    spec.add_sensor(name="torso_upvector", type=mujoco.mjtSensor.mjSENS_FRAMEZAXIS, objtype=site, objname="imu_in_torso")
    spec.add_sensor(name="torso_global_angvel", type=mujoco.mjtSensor.mjSENS_FRAMEANGVEL, objtype=site, objname="imu_in_torso")
    spec.add_sensor(name="pelvis_global_angvel", type=mujoco.mjtSensor.mjSENS_FRAMEANGVEL, objtype=site, objname="imu_in_pelvis")
    for side in ("left", "right"):
        _contact(spec, f"{side}_foot_floor_found", f"{side}_ankle_roll_link", "floor", mujoco.mjtObj.mjOBJ_GEOM)
        _contact(spec, f"{side}_hand_{side}_thigh_found", f"{side}_wrist_yaw_link", f"{side}_hip_yaw_link")
    _contact(spec, "right_foot_left_foot_found", "right_ankle_roll_link", "left_ankle_roll_link")
    _contact(spec, "left_foot_right_shin_found", "left_ankle_roll_link", "right_knee_link")
    _contact(spec, "right_foot_left_shin_found", "right_ankle_roll_link", "left_knee_link")
    for actuator in spec.actuators:
        spec.add_sensor(name=f"{actuator.name}_force", type=mujoco.mjtSensor.mjSENS_ACTUATORFRC,
                        objtype=mujoco.mjtObj.mjOBJ_ACTUATOR, objname=actuator.name)
    knees_bent = drive.key("knees_bent").id
    for key in list(spec.keys):
        spec.delete(key)
    spec.add_key(name="knees_bent", qpos=drive.key_qpos[knees_bent], ctrl=drive.key_ctrl[knees_bent])
    return spec.to_xml(), str(scene_path("g1_full").parent)


def handoff_model() -> mujoco.MjModel:
    """Compile the one G1 every humanoid task uses (see the module docstring)."""
    xml, directory = handoff_spec_xml()
    spec = mujoco.MjSpec.from_string(xml)
    spec.modelfiledir = directory + "/"
    return spec.compile()


def gait_height(phase: np.ndarray, swing_height: float) -> np.ndarray:
    """Playground's foot-height reference: a cubic Bezier up over the first half of the phase
    cycle and down over the second."""
    def bezier(start, end, x):
        return start + (end - start) * (x**3 + 3 * x**2 * (1 - x))

    x = (phase + np.pi) / (2 * np.pi)
    return np.where(x <= 0.5, bezier(0.0, swing_height, 2 * x), bezier(swing_height, 0.0, 2 * x - 1))


@dataclasses.dataclass
class G1Params:
    action_scale: float = 0.5
    episode_steps: int = 1000
    # pushes: every `push_interval` seconds (drawn per episode) the base gets `push_speed` m/s sideways
    pushes: bool = True
    push_interval: tuple[float, float] = (5.0, 10.0)
    push_speed: tuple[float, float] = (0.1, 2.0)
    # domain randomisation: each environment draws one of `model_variants` models
    randomize: bool = True
    model_variants: int = 8
    floor_friction: tuple[float, float] = (0.4, 1.0)
    mass_scale: tuple[float, float] = (0.9, 1.1)
    # observation noise (uniform, +-level*scale), Playground's scales
    noise_level: float = 1.0
    noise_joint_pos: float = 0.03
    noise_joint_vel: float = 1.5
    noise_gravity: float = 0.05
    noise_linvel: float = 0.1
    noise_gyro: float = 0.2
    soft_joint_limit_factor: float = 0.95
    fall_gravity_z: float = -0.5  # fallen once the base's "down" points less than this much down
    fall_height: float = 0.4


class G1Task(MujocoTask):
    """The shared robot, observation layout, pushes, randomisation and sensors. A task sets
    `mode`, fills `self.command` and defines its rewards."""

    ctrl_dt = 0.02
    action_dim = NUM_JOINTS
    mode = ""

    @property
    def episode_steps(self) -> int:
        return self.params.episode_steps

    def _build_sim(self) -> MujocoBatch:
        model = handoff_model()
        key = model.key("knees_bent").id
        self.default_qpos = model.key_qpos[key].copy()
        self.default_pose = self.default_qpos[7:].copy()
        self.joint_low, self.joint_high = model.jnt_range[1:, 0].copy(), model.jnt_range[1:, 1].copy()
        center, half = (self.joint_low + self.joint_high) / 2, (self.joint_high - self.joint_low) / 2
        self.soft_low = center - half * self.params.soft_joint_limit_factor
        self.soft_high = center + half * self.params.soft_joint_limit_factor
        n = self.num_envs
        self.command = np.zeros((n, sum(COMMAND_LAYOUT.values())))
        self.command[:, COMMAND_SLICES["mode"]] = np.eye(len(MODES))[MODES.index(self.mode)]
        self.phase = np.zeros((n, 2))
        self.phase_step = np.zeros(n)
        self.push_interval_steps = np.ones(n, dtype=np.int64)
        return MujocoBatch(model, n, round(self.ctrl_dt / model.opt.timestep), self._variants(model))

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

    def _start_episodes(self, envs: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """What every task's reset shares: a model variant, the state, push timers."""
        p, n = self.params, len(envs)
        if p.randomize:
            self.sim.assign_variants(envs, self.rng.integers(len(self.sim.variants), size=n))
        self.sim.set_state(envs, qpos, qvel)
        self.push_interval_steps[envs] = np.round(self.rng.uniform(*p.push_interval, n) / self.ctrl_dt).astype(np.int64)

    def _push(self) -> None:
        if not self.params.pushes:
            return
        pushed = np.flatnonzero(self.steps % self.push_interval_steps == 0)
        if len(pushed):
            angle = self.rng.uniform(0, 2 * np.pi, len(pushed))
            speed = self.rng.uniform(*self.params.push_speed, len(pushed))
            self.sim.qvel[pushed, 0] += speed * np.cos(angle)
            self.sim.qvel[pushed, 1] += speed * np.sin(angle)

    def _advance_phase(self) -> None:
        self.phase = np.fmod(self.phase + self.phase_step[:, None] + np.pi, 2 * np.pi) - np.pi

    def _control(self, actions: np.ndarray) -> np.ndarray:
        return self.default_pose + self.params.action_scale * actions

    # ---------------------------------------------------------------- the robot's state
    @property
    def gravity(self) -> np.ndarray:
        return rotate_inverse(self.sim.qpos[:, 3:7], DOWN)

    @property
    def gyro(self) -> np.ndarray:
        return self.sim.qvel[:, 3:6]  # the free joint's angular velocity is local

    @property
    def local_linvel(self) -> np.ndarray:
        return rotate_inverse(self.sim.qpos[:, 3:7], self.sim.qvel[:, 0:3])

    @property
    def height(self) -> np.ndarray:
        return self.sim.qpos[:, 2]

    def joints(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sim.qpos[:, 7:] - self.default_pose, self.sim.qvel[:, 6:]

    def contact(self) -> np.ndarray:
        return np.stack([self.sim.sensor(f"{foot}_floor_found")[:, 0] > 0 for foot in FEET], axis=1)

    def foot_heights(self) -> np.ndarray:
        return np.stack([self.sim.sensor(f"{foot}_pos")[:, 2] for foot in FEET], axis=1)

    def hand_positions(self) -> np.ndarray:
        """(N, 6): both palms in the pelvis frame."""
        return np.concatenate([self.sim.sensor(f"{hand}_pos") for hand in HANDS], axis=1)

    def actuator_forces(self) -> np.ndarray:
        return np.stack([self.sim.sensor(f"{self.sim.model.actuator(i).name}_force")[:, 0] for i in range(NUM_JOINTS)], axis=1)

    def found(self, sensor: str) -> np.ndarray:
        return self.sim.sensor(sensor)[:, 0] > 0

    def fallen(self) -> np.ndarray:
        return (self.gravity[:, 2] > self.params.fall_gravity_z) | (self.height < self.params.fall_height)

    def joint_limit_excess(self) -> np.ndarray:
        q = self.sim.qpos[:, 7:]
        return np.sum(np.maximum(self.soft_low - q, 0.0) + np.maximum(q - self.soft_high, 0.0), axis=1)

    # ---------------------------------------------------------------- observations
    def _noise(self, shape, scale: float) -> np.ndarray:
        return (2 * self.rng.random(shape) - 1) * self.params.noise_level * scale

    def observe(self) -> np.ndarray:
        p, n = self.params, self.num_envs
        position, velocity = self.joints()
        phase = np.concatenate([np.cos(self.phase), np.sin(self.phase)], axis=1) * (self.phase_step[:, None] > 0)
        return np.concatenate([
            self.local_linvel + self._noise((n, 3), p.noise_linvel), self.gyro + self._noise((n, 3), p.noise_gyro),
            self.gravity + self._noise((n, 3), p.noise_gravity), position + self._noise(position.shape, p.noise_joint_pos),
            velocity + self._noise(velocity.shape, p.noise_joint_vel), self.last_action, phase, self.command,
        ], axis=1).astype(np.float32)

    def critic_observe(self) -> np.ndarray:
        position, velocity = self.joints()
        return np.concatenate([self.observe(), self.local_linvel, self.gyro, self.gravity, position, velocity,
                               self.height[:, None], self.contact(), self.foot_heights(), self.hand_positions(),
                               self.actuator_forces() / 100.0], axis=1).astype(np.float32)


@dataclasses.dataclass
class VelocityParams(G1Params):
    lin_vel_x: tuple[float, float] = (-1.0, 1.0)
    lin_vel_y: tuple[float, float] = (-0.5, 0.5)
    ang_vel_yaw: tuple[float, float] = (-1.0, 1.0)
    zero_command_probability: float = 0.1
    command_resample_steps: int = 500
    gait_frequency: tuple[float, float] = (1.25, 1.5)
    max_foot_height: float = 0.15
    max_contact_force: float = 500.0
    tracking_sigma: float = 0.25
    # reward scales: Playground's G1 joystick recipe (its terms with a non-zero scale)
    tracking_lin_vel: float = 1.0
    tracking_ang_vel: float = 0.75
    ang_vel_xy: float = -0.15
    orientation: float = -2.0
    feet_air_time: float = 2.0
    feet_slip: float = -0.25
    feet_phase: float = 1.0
    stand_still: float = -1.0
    termination: float = -100.0
    collision: float = -0.1
    contact_force: float = -0.01
    joint_deviation_knee: float = -0.1
    joint_deviation_hip: float = -0.25
    dof_pos_limits: float = -1.0
    pose: float = -0.1


HIP_ROLL_YAW = [1, 2, 7, 8]  # left hip roll, yaw; right hip roll, yaw
KNEES = [3, 9]


class G1Velocity(G1Task):
    """Playground's G1 joystick task on the shared robot."""

    name = "G1Velocity"
    Params = VelocityParams
    mode = "velocity"

    def _build_sim(self) -> MujocoBatch:
        n = self.num_envs
        self.air_time = np.zeros((n, 2))
        self.last_contact = np.zeros((n, 2), dtype=bool)
        self.first_contact = np.zeros((n, 2), dtype=bool)
        self.landed_air_time = np.zeros((n, 2))  # how long a foot was in the air, on the step it lands
        return super()._build_sim()

    @property
    def velocity_command(self) -> np.ndarray:
        return self.command[:, COMMAND_SLICES["velocity"]]

    def _sample_commands(self, envs: np.ndarray) -> None:
        p, n = self.params, len(envs)
        command = np.stack([self.rng.uniform(*p.lin_vel_x, n), self.rng.uniform(*p.lin_vel_y, n),
                            self.rng.uniform(*p.ang_vel_yaw, n)], axis=1)
        command[self.rng.random(n) < p.zero_command_probability] = 0.0
        self.command[envs, COMMAND_SLICES["velocity"]] = command

    def _reset_envs(self, envs: np.ndarray) -> None:
        n, p = len(envs), self.params
        qpos = np.tile(self.default_qpos, (n, 1))
        qpos[:, 0:2] += self.rng.uniform(-0.5, 0.5, (n, 2))
        qpos[:, 3:7] = quaternion_multiply(qpos[:, 3:7], yaw_quaternion(self.rng.uniform(-np.pi, np.pi, n)))
        qpos[:, 7:] = np.clip(qpos[:, 7:] * self.rng.uniform(0.5, 1.5, (n, NUM_JOINTS)), self.joint_low, self.joint_high)
        qvel = np.zeros((n, self.sim.model.nv))
        qvel[:, 0:6] = self.rng.uniform(-0.5, 0.5, (n, 6))
        self._start_episodes(envs, qpos, qvel)
        self._sample_commands(envs)
        self.phase[envs] = np.array([0.0, np.pi])
        self.phase_step[envs] = 2 * np.pi * self.ctrl_dt * self.rng.uniform(*p.gait_frequency, n)
        self.air_time[envs] = 0.0
        self.last_contact[envs] = False
        self.first_contact[envs] = False
        self.landed_air_time[envs] = 0.0

    def _after_physics(self) -> None:
        self._advance_phase()
        contact = self.contact()
        touched = contact | self.last_contact  # a filtered contact, as Playground does
        self.first_contact = (self.air_time > 0.0) & touched
        self.air_time += self.ctrl_dt
        self.landed_air_time = np.where(self.first_contact, self.air_time, 0.0)
        self.air_time[contact] = 0.0
        self.last_contact = contact
        resample = np.flatnonzero(self.steps % self.params.command_resample_steps == 0)
        if len(resample):
            self._sample_commands(resample)
        self._push()

    def reward_terms(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Playground's joystick terms, each times its scale and dt (see `VelocityParams`)."""
        p, command = self.params, self.velocity_command
        linvel, gyro = self.local_linvel, self.gyro
        contact = self.contact()
        q = self.sim.qpos[:, 7:]
        pelvis_world_linvel = self.sim.qvel[:, 0:2]
        pelvis_world_yaw_rate = self.sim.sensor("pelvis_global_angvel")[:, 2]
        moving = ((np.linalg.norm(pelvis_world_linvel, axis=1) > 0.1) | (np.abs(pelvis_world_yaw_rate) > 0.1)
                  | (np.linalg.norm(command, axis=1) > 0.01))
        feet_phase = np.exp(-np.sum((self.foot_heights() - gait_height(self.phase, p.max_foot_height)) ** 2, axis=1) / 0.01)
        foot_force = np.stack([self.sim.sensor(f"{foot}_force")[:, 2] for foot in FEET], axis=1)
        hip_weight = np.where(command[:, 1:2] > 0.1, [0.0, 1.0, 0.0, 1.0], 1.0)  # hip roll may move when stepping sideways
        collision = self.found("left_hand_left_thigh_found") | self.found("right_hand_right_thigh_found")
        terms = {
            "tracking_lin_vel": p.tracking_lin_vel * np.exp(-np.sum((command[:, :2] - linvel[:, :2]) ** 2, axis=1) / p.tracking_sigma),
            "tracking_ang_vel": p.tracking_ang_vel * np.exp(-(command[:, 2] - gyro[:, 2]) ** 2 / p.tracking_sigma),
            "ang_vel_xy": p.ang_vel_xy * np.sum(self.sim.sensor("torso_global_angvel")[:, :2] ** 2, axis=1),
            "orientation": p.orientation * np.sum((self.sim.sensor("torso_upvector") - [0.073, 0.0, 1.0]) ** 2, axis=1),
            "feet_air_time": p.feet_air_time * np.sum(np.minimum((self.landed_air_time - 0.2) * self.first_contact, 0.3), axis=1),
            "feet_slip": p.feet_slip * np.linalg.norm(pelvis_world_linvel, axis=1) * contact.sum(axis=1),
            "feet_phase": p.feet_phase * feet_phase * moving,
            "stand_still": p.stand_still * np.sum(np.abs(q - self.default_pose), axis=1) * (np.linalg.norm(command, axis=1) < 0.01),
            "termination": p.termination * self.terminated(),
            "collision": p.collision * collision,
            "contact_force": p.contact_force * np.sum(np.maximum(np.abs(foot_force) - p.max_contact_force, 0.0), axis=1),
            "joint_deviation_hip": p.joint_deviation_hip * np.sum(np.abs(q[:, HIP_ROLL_YAW] - self.default_pose[HIP_ROLL_YAW]) * hip_weight, axis=1),
            "joint_deviation_knee": p.joint_deviation_knee * np.sum(np.abs(q[:, KNEES] - self.default_pose[KNEES]), axis=1),
            "dof_pos_limits": p.dof_pos_limits * self.joint_limit_excess(),
            "pose": p.pose * np.sum((q - self.default_pose) ** 2, axis=1),
        }
        return {key: value * self.ctrl_dt for key, value in terms.items()}

    def terminated(self) -> np.ndarray:
        feet_tangled = (self.found("right_foot_left_foot_found") | self.found("left_foot_right_shin_found")
                        | self.found("right_foot_left_shin_found"))
        return self.fallen() | feet_tangled | ~np.isfinite(self.sim.state).all(axis=1)

    def velocity_error(self) -> np.ndarray:
        return np.linalg.norm(self.velocity_command[:, :2] - self.local_linvel[:, :2], axis=1)

    def step_metrics(self) -> dict[str, np.ndarray]:
        return {"velocity_error": self.velocity_error(), "yaw_rate_error": np.abs(self.velocity_command[:, 2] - self.gyro[:, 2])}

    def success(self) -> np.ndarray:
        """Tracking within 0.25 m/s and 0.25 rad/s of the command, standing."""
        return (self.velocity_error() < 0.25) & (np.abs(self.velocity_command[:, 2] - self.gyro[:, 2]) < 0.25) & ~self.fallen()


@dataclasses.dataclass
class RecoveryParams(G1Params):
    episode_steps: int = 250  # 5 s
    pushes: bool = False
    fallen_states: int = 96  # settled poses in the bank; each episode also turns and perturbs one
    settle_seconds: float = 1.5
    upright_start_fraction: float = 0.0  # episodes that start upright but strongly pushed (0: none)
    upright_height: float = 0.6
    still_speed: float = 0.5  # m/s and rad/s of the base below which it counts as still
    # reward scales
    upright: float = 1.0
    height: float = 1.0
    still: float = 0.5
    torque: float = -2e-4
    dof_pos_limits: float = -1.0
    action_rate: float = -0.01


@functools.cache
def fallen_bank(count: int, settle_seconds: float, seed: int) -> np.ndarray:
    """(count, nq + nv) states of the robot after a drop from a random orientation with random
    joint targets, at rest on the floor. All drops are simulated together (one batched rollout,
    ~0.1 s of CPU per state); the bank is kept on disk under the robot's and the arguments' hash,
    so each rollout worker does not settle it again."""
    key = hashlib.sha256(repr((handoff_spec_xml()[0], count, settle_seconds, seed, mujoco.__version__)).encode()).hexdigest()[:16]
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rayworks" / f"g1_fallen_{key}.npy"
    if path.is_file():
        return np.load(path)
    bank = _settle_fallen(count, settle_seconds, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.npy")
    np.save(staging, bank)
    os.replace(staging, path)  # whole or absent, even with several workers building at once
    return bank


def _settle_fallen(count: int, settle_seconds: float, seed: int) -> np.ndarray:
    model = handoff_model()
    rng = np.random.default_rng(seed)
    default_qpos = model.key_qpos[model.key("knees_bent").id]
    low, high = model.jnt_range[1:, 0], model.jnt_range[1:, 1]
    qpos = np.tile(default_qpos, (count, 1))
    qpos[:, 2], qpos[:, 3:7] = 0.9, random_quaternion(rng, count)
    qpos[:, 7:] = np.clip(default_qpos[7:] + rng.uniform(-0.6, 0.6, (count, NUM_JOINTS)), low, high)
    batch = MujocoBatch(model, count, round(settle_seconds / model.opt.timestep))
    batch.set_state(np.arange(count), qpos, np.zeros((count, model.nv)))
    batch.step(qpos[:, 7:].copy())
    bank = np.concatenate([batch.qpos, batch.qvel], axis=1)
    batch.close()
    return bank[np.isfinite(bank).all(axis=1)]


class G1Recovery(G1Task):
    name = "G1Recovery"
    Params = RecoveryParams
    mode = "recovery"

    def _build_sim(self) -> MujocoBatch:
        sim = super()._build_sim()
        self.fallen_bank = fallen_bank(self.params.fallen_states, self.params.settle_seconds, 0)
        return sim

    def _reset_envs(self, envs: np.ndarray) -> None:
        n, nq, p = len(envs), self.sim.model.nq, self.params
        rows = self.fallen_bank[self.rng.integers(len(self.fallen_bank), size=n)]
        qpos, qvel = rows[:, :nq].copy(), rows[:, nq:].copy()
        # a fallen pose turned to any heading and moved anywhere is as settled as the original
        qpos[:, 3:7] = quaternion_multiply(yaw_quaternion(self.rng.uniform(-np.pi, np.pi, n)), qpos[:, 3:7])
        qpos[:, 0:2] = self.rng.uniform(-0.5, 0.5, (n, 2))
        qpos[:, 7:] = np.clip(qpos[:, 7:] + self.rng.uniform(-0.1, 0.1, (n, NUM_JOINTS)), self.joint_low, self.joint_high)
        upright = self.rng.random(n) < p.upright_start_fraction
        qpos[upright], qvel[upright] = self.default_qpos, 0.0
        qvel[upright, 0:2] = self.rng.uniform(-2.0, 2.0, (int(upright.sum()), 2))
        qvel[upright, 3:6] = self.rng.uniform(-3.0, 3.0, (int(upright.sum()), 3))
        self._start_episodes(envs, qpos, qvel)

    def _after_physics(self) -> None:
        self._push()

    def uprightness(self) -> np.ndarray:
        return np.clip(-self.gravity[:, 2], 0.0, 1.0)  # 1 when the base's z axis points up

    def reward_terms(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        p = self.params
        upright = self.uprightness()
        height = np.clip(self.height / self.default_qpos[2], 0.0, 1.0)
        terms = {"upright": p.upright * upright, "height": p.height * height,
                 "still": p.still * upright * np.exp(-np.sum(self.sim.qvel[:, :6] ** 2, axis=1)),
                 "torque": p.torque * np.sum(np.abs(self.actuator_forces()), axis=1),
                 "dof_pos_limits": p.dof_pos_limits * self.joint_limit_excess(),
                 "action_rate": p.action_rate * np.sum((actions - self.last_action) ** 2, axis=1)}
        return {key: value * self.ctrl_dt for key, value in terms.items()}

    def terminated(self) -> np.ndarray:
        return ~np.isfinite(self.sim.state).all(axis=1)

    def success(self) -> np.ndarray:
        """Upright, pelvis above `upright_height`, and still (read at an episode's end)."""
        still = np.linalg.norm(self.sim.qvel[:, :6], axis=1) < self.params.still_speed
        return (self.height > self.params.upright_height) & (-self.gravity[:, 2] > 0.9) & still


@dataclasses.dataclass
class MotionParams(G1Params):
    episode_steps: int = 500  # 10 s
    walk_probability: float = 0.3  # episodes that walk (a small velocity command) while tracking
    walk_speed: float = 0.4
    gait_frequency: tuple[float, float] = (1.25, 1.5)
    motion_frequency: tuple[float, float] = (0.2, 0.6)  # Hz of the reference motions
    tracking_sigma: float = 0.25
    hand_sigma: float = 0.01  # m^2
    # reward scales
    tracking_hands: float = 1.5
    tracking_upper_body: float = 1.0
    tracking_lin_vel: float = 1.0
    tracking_ang_vel: float = 0.5
    orientation: float = -2.0
    lower_body_pose: float = -0.1
    termination: float = -100.0
    action_rate: float = -0.01


MOTIONS = ("reach", "wave", "turn")


class ReferenceMotions:
    """Seeded upper-body references (waist + both arms, 17 joints), one per environment, as
    closed-form functions of time so any step is computed without a stored trajectory:

    - reach: both arms go out to a random pose within the joint limits and back (raised cosine);
    - wave: one arm raised, its elbow and shoulder yaw oscillating;
    - turn: the waist turning left and right, the arms swinging a little.
    """

    def __init__(self, num_envs: int, default_upper: np.ndarray, low: np.ndarray, high: np.ndarray):
        self.default, self.low, self.high = default_upper, low, high
        self.kind = np.zeros(num_envs, dtype=np.int64)
        self.amplitude = np.zeros((num_envs, len(default_upper)))
        self.frequency = np.zeros(num_envs)
        self.offset = np.zeros((num_envs, len(default_upper)))

    def sample(self, envs: np.ndarray, rng: np.random.Generator, frequency: tuple[float, float]) -> None:
        n, dim = len(envs), len(self.default)
        kind = rng.integers(len(MOTIONS), size=n)
        span = np.minimum(self.high - self.default, self.default - self.low)  # symmetric room around the default
        amplitude, offset = np.zeros((n, dim)), np.zeros((n, dim))
        reach = kind == MOTIONS.index("reach")
        target = rng.uniform(self.low, self.high, (n, dim))
        amplitude[reach, 3:] = (target - self.default)[reach, 3:] * 0.6
        wave = kind == MOTIONS.index("wave")
        right = rng.random(n) < 0.5
        arm = np.where(right[:, None], np.arange(10, 17), np.arange(3, 10))  # the waving arm's 7 joints
        for row in np.flatnonzero(wave):
            joints = arm[row]
            offset[row, joints[0]] = -1.2  # shoulder pitch: the arm forward and up
            offset[row, joints[3]] = -0.3  # elbow
            amplitude[row, joints[2]] = 0.5 * span[joints[2]]  # shoulder yaw
            amplitude[row, joints[3]] = 0.4 * span[joints[3]]
        turn = kind == MOTIONS.index("turn")
        amplitude[turn, 0] = rng.uniform(0.3, 0.8, int(turn.sum()))
        amplitude[turn, 3::7] = 0.3  # shoulder pitches swing
        self.kind[envs], self.amplitude[envs], self.offset[envs] = kind, amplitude, offset
        self.frequency[envs] = rng.uniform(*frequency, n)

    def at(self, time: np.ndarray) -> np.ndarray:
        """(N, 17) joint targets at `time` seconds into each episode, within the joint limits."""
        angle = 2 * np.pi * self.frequency * time
        reach = (self.kind == MOTIONS.index("reach"))[:, None]
        shape = np.where(reach, 0.5 * (1 - np.cos(angle))[:, None], np.sin(angle)[:, None])
        return np.clip(self.default + self.offset + self.amplitude * shape, self.low, self.high)


class G1Motion(G1Task):
    name = "G1Motion"
    Params = MotionParams
    mode = "motion"

    def _build_sim(self) -> MujocoBatch:
        sim = super()._build_sim()
        self.motions = ReferenceMotions(self.num_envs, self.default_pose[UPPER_BODY], self.soft_low[UPPER_BODY],
                                        self.soft_high[UPPER_BODY])
        self.reference = np.zeros((self.num_envs, UPPER_BODY.stop - UPPER_BODY.start))
        self._kinematics = mujoco.MjData(sim.model)  # forward kinematics of the references
        self._kinematics.qpos[:] = self.default_qpos
        self._kinematics.qpos[0:7] = [0, 0, 0, 1, 0, 0, 0]  # the pelvis at the origin: hands come out in its frame
        self._palms = [sim.model.site(hand).id for hand in HANDS]
        self._targets_step = np.full(self.num_envs, -1)
        return sim

    def _reset_envs(self, envs: np.ndarray) -> None:
        n, p = len(envs), self.params
        qpos = np.tile(self.default_qpos, (n, 1))
        qpos[:, 3:7] = quaternion_multiply(qpos[:, 3:7], yaw_quaternion(self.rng.uniform(-np.pi, np.pi, n)))
        qvel = np.zeros((n, self.sim.model.nv))
        self._start_episodes(envs, qpos, qvel)
        self.motions.sample(envs, self.rng, p.motion_frequency)
        walking = self.rng.random(n) < p.walk_probability
        velocity = np.zeros((n, 3))
        velocity[walking, 0] = self.rng.uniform(-p.walk_speed, p.walk_speed, int(walking.sum()))
        self.command[envs, COMMAND_SLICES["velocity"]] = velocity
        self.phase[envs] = np.array([0.0, np.pi])
        self.phase_step[envs] = 2 * np.pi * self.ctrl_dt * self.rng.uniform(*p.gait_frequency, n)
        self._update_targets(envs)

    def _update_targets(self, envs: np.ndarray) -> None:
        """The reference at each environment's current time, and its hand / waist targets."""
        self._targets_step[envs] = self.steps[envs]
        self.reference[envs] = self.motions.at(self.steps * self.ctrl_dt)[envs]
        data = self._kinematics
        for env in envs.tolist():
            data.qpos[7 + UPPER_BODY.start:7 + UPPER_BODY.stop] = self.reference[env]
            mujoco.mj_kinematics(self.sim.model, data)
            self.command[env, COMMAND_SLICES["left_hand"]] = data.site_xpos[self._palms[0]]
            self.command[env, COMMAND_SLICES["right_hand"]] = data.site_xpos[self._palms[1]]
        self.command[envs, COMMAND_SLICES["torso"]] = self.reference[envs, 0:3]

    def _after_physics(self) -> None:
        self._advance_phase()
        self._push()

    def hand_error(self) -> np.ndarray:
        """Mean distance (m) of the two palms from their targets."""
        target = np.concatenate([self.command[:, COMMAND_SLICES["left_hand"]], self.command[:, COMMAND_SLICES["right_hand"]]], axis=1)
        return np.linalg.norm((self.hand_positions() - target).reshape(-1, 2, 3), axis=2).mean(axis=1)

    def upper_body_error(self) -> np.ndarray:
        return np.sqrt(np.mean((self.sim.qpos[:, 7 + UPPER_BODY.start:7 + UPPER_BODY.stop] - self.reference) ** 2, axis=1))

    def reward_terms(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Tracking is judged against the targets the policy saw with its last observation."""
        p = self.params
        velocity = self.command[:, COMMAND_SLICES["velocity"]]
        q = self.sim.qpos[:, 7:]
        hands = self.hand_error()
        terms = {
            "tracking_hands": p.tracking_hands * np.exp(-hands**2 / p.hand_sigma),
            "tracking_upper_body": p.tracking_upper_body * np.exp(-self.upper_body_error() ** 2 / 0.05),
            "tracking_lin_vel": p.tracking_lin_vel * np.exp(-np.sum((velocity[:, :2] - self.local_linvel[:, :2]) ** 2, axis=1) / p.tracking_sigma),
            "tracking_ang_vel": p.tracking_ang_vel * np.exp(-(velocity[:, 2] - self.gyro[:, 2]) ** 2 / p.tracking_sigma),
            "orientation": p.orientation * np.sum(self.gravity[:, :2] ** 2, axis=1),
            "lower_body_pose": p.lower_body_pose * np.sum((q[:, :12] - self.default_pose[:12]) ** 2, axis=1),
            "termination": p.termination * self.terminated(),
            "action_rate": p.action_rate * np.sum((actions - self.last_action) ** 2, axis=1),
        }
        self._last_hand_error = hands
        return {key: value * self.ctrl_dt for key, value in terms.items()}

    def step_metrics(self) -> dict[str, np.ndarray]:
        return {"hand_error": self._last_hand_error, "upper_body_error": self.upper_body_error()}

    def observe(self) -> np.ndarray:
        # the next step's targets, computed once per step (observe also runs inside critic_observe)
        stale = np.flatnonzero(self.steps != self._targets_step)
        if len(stale):
            self._update_targets(stale)
        return super().observe()

    def terminated(self) -> np.ndarray:
        return self.fallen() | ~np.isfinite(self.sim.state).all(axis=1)

    def success(self) -> np.ndarray:
        """Both palms within 10 cm of their targets, standing."""
        return (self.hand_error() < 0.1) & ~self.fallen()


# The task each mode names, as registered with Gymnasium (`import envs`).
MODE_ENVS = {"velocity": "rayworks/G1Velocity-v0", "recovery": "rayworks/G1Recovery-v0", "motion": "rayworks/G1Motion-v0"}
