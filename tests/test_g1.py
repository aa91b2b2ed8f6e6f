"""The one G1 every humanoid task uses: whole-body collisions, one default pose, one observation
layout; Playground's joystick reward terms recomputed independently from MuJoCo's own data on
recorded states; fall recovery's bank; the motion-tracking task's references and targets."""

import mujoco
import numpy as np
import pytest

import envs
from envs.g1 import (COMMAND_SLICES, MODES, OBSERVATION_DIM, G1Motion, G1Recovery, G1Velocity, handoff_model,
                     observation_field)

G1_TASKS = (G1Velocity, G1Recovery, G1Motion)


def test_one_robot_with_whole_body_collisions_and_one_layout():
    model = handoff_model()
    colliding_bodies = {model.body(model.geom_bodyid[g]).name for g in range(model.ngeom)
                        if model.geom_contype[g] or model.geom_conaffinity[g]}
    assert {"pelvis", "torso_link", "left_elbow_link", "right_knee_link"} <= colliding_bodies
    poses, layouts = set(), set()
    for mode, cls in zip(MODES, G1_TASKS):
        task = cls(2, seed=0)
        poses.add(tuple(task.default_pose.round(6)))
        obs = task.observe()
        layouts.add(obs.shape[1])
        np.testing.assert_array_equal(observation_field(obs, "mode"), np.tile(np.eye(3)[MODES.index(mode)], (2, 1)))
        task.close()
    assert len(poses) == 1 and layouts == {OBSERVATION_DIM}


def test_fields_a_task_does_not_use_are_zero():
    velocity, recovery = G1Velocity(4, seed=1), G1Recovery(4, seed=1)
    for name in ("left_hand", "right_hand", "torso"):
        assert not observation_field(velocity.observe(), name).any()
    for name in ("velocity", "left_hand", "phase"):
        assert not observation_field(recovery.observe(), name).any()
    assert observation_field(velocity.observe(), "velocity").any()


def _forward(model: mujoco.MjModel, state: np.ndarray) -> mujoco.MjData:
    data = mujoco.MjData(model)
    mujoco.mj_setState(model, data, state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    mujoco.mj_forward(model, data)
    return data


def _touching(model, data, body_a: str, other: str) -> bool:
    """Any contact between a geom of body `body_a` and `other` (a body, or the geom 'floor')."""
    a = model.body(body_a).id
    for contact in data.contact[: data.ncon]:
        bodies = {model.geom_bodyid[contact.geom1], model.geom_bodyid[contact.geom2]}
        geoms = {model.geom(contact.geom1).name, model.geom(contact.geom2).name}
        if a in bodies and (other in geoms if other == "floor" else model.body(other).id in bodies - {a}):
            return True
    return False


def _bezier_foot_height(phase: float, height: float) -> float:
    x = (phase + np.pi) / (2 * np.pi)
    s = 2 * x if x <= 0.5 else 2 * x - 1
    rise = 3 * s**2 - 2 * s**3  # x^3 + 3x^2(1-x)
    return height * rise if x <= 0.5 else height * (1 - rise)


def test_velocity_reward_terms_match_an_independent_computation_on_recorded_states():
    """Each Playground joystick term, recomputed from MuJoCo's data (contacts, site frames, joint
    addresses by name) for states the environment recorded, with the gait and air-time
    bookkeeping replayed here. Sensors of a control step are read before its last physics
    substep (as `mujoco.rollout` and Playground's MJX step both do), so contact- and site-based
    quantities are recomputed on that state. The feet's force sensors are the one reading taken
    from the recording (see below)."""
    n, p = 6, G1Velocity.Params()
    task = G1Velocity(n, seed=3, pushes=False)
    task.command[:2, COMMAND_SLICES["velocity"]] = 0.0  # two standing commands: stand_still applies
    model, default = task.sim.model, task.default_pose
    qadr = {model.joint(j).name: model.jnt_qposadr[j] - 7 for j in range(1, model.njnt)}
    phase = task.phase.copy()
    air_time, last_contact = np.zeros((n, 2)), np.zeros((n, 2), bool)
    rng = np.random.default_rng(0)
    compared = set()
    for step in range(40):
        actions = rng.uniform(-0.3, 0.3, (n, 29)).astype(np.float32)
        task.sim.step(task._control(actions))
        task.steps += 1
        task._after_physics()
        terms = task.reward_terms(actions)
        phase = np.fmod(phase + task.phase_step[:, None] + np.pi, 2 * np.pi) - np.pi
        for i in range(n):
            end = _forward(model, task.sim.state[i])
            before = _forward(model, task.sim._state_out[i, -2])  # the state the step's sensors were read on
            command = task.command[i, COMMAND_SLICES["velocity"]]
            pelvis = end.xmat[model.body("pelvis").id].reshape(3, 3)
            local_linvel = pelvis.T @ end.qvel[0:3]
            contact = np.array([_touching(model, before, f"{side}_ankle_roll_link", "floor") for side in ("left", "right")])
            touched = contact | last_contact[i]
            first = (air_time[i] > 0) & touched
            air_time[i] += task.ctrl_dt
            landed = np.where(first, air_time[i], 0.0)
            air_time[i][contact] = 0.0
            last_contact[i] = contact
            q = end.qpos[7:]
            torso_site = model.site("imu_in_torso").id
            torso_angvel = np.zeros(6)
            mujoco.mj_objectVelocity(model, before, mujoco.mjtObj.mjOBJ_SITE, torso_site, torso_angvel, 0)
            pelvis_angvel = np.zeros(6)
            mujoco.mj_objectVelocity(model, before, mujoco.mjtObj.mjOBJ_SITE, model.site("imu_in_pelvis").id, pelvis_angvel, 0)
            feet_z = [before.site_xpos[model.site(f).id][2] for f in ("left_foot", "right_foot")]
            moving = (np.linalg.norm(end.qvel[0:2]) > 0.1 or abs(pelvis_angvel[2]) > 0.1 or np.linalg.norm(command) > 0.01)
            gait_error = sum((z - _bezier_foot_height(ph, p.max_foot_height)) ** 2 for z, ph in zip(feet_z, phase[i]))
            hips = [qadr[f"{s}_hip_{a}_joint"] for s in ("left", "right") for a in ("roll", "yaw")]
            knees = [qadr[f"{s}_knee_joint"] for s in ("left", "right")]
            hip_weight = np.array([0.0, 1.0, 0.0, 1.0]) if command[1] > 0.1 else np.ones(4)
            low, high = model.jnt_range[1:, 0], model.jnt_range[1:, 1]
            mid, half = (low + high) / 2, (high - low) / 2 * 0.95
            # a force sensor depends on the constraint solver's warm start inside the step, which a
            # state alone does not restore: the recorded reading is used, the formula checked here
            forces = [task.sim.sensor(f"{f}_force")[i, 2] for f in ("left_foot", "right_foot")]
            down = pelvis.T @ np.array([0.0, 0.0, -1.0])
            tangled = (_touching(model, before, "right_ankle_roll_link", "left_ankle_roll_link")
                       or _touching(model, before, "left_ankle_roll_link", "right_knee_link")
                       or _touching(model, before, "right_ankle_roll_link", "left_knee_link"))
            expected = {
                "tracking_lin_vel": np.exp(-np.sum((command[:2] - local_linvel[:2]) ** 2) / 0.25),
                "tracking_ang_vel": 0.75 * np.exp(-(command[2] - end.qvel[5]) ** 2 / 0.25),
                "ang_vel_xy": -0.15 * np.sum(torso_angvel[:2] ** 2),
                "orientation": -2.0 * np.sum((before.site_xmat[torso_site].reshape(3, 3)[:, 2] - [0.073, 0, 1]) ** 2),
                "feet_air_time": 2.0 * np.sum(np.minimum((landed - 0.2) * first, 0.3)),
                "feet_slip": -0.25 * np.linalg.norm(end.qvel[0:2]) * contact.sum(),
                "feet_phase": np.exp(-gait_error / 0.01) * moving,
                "stand_still": -1.0 * np.sum(np.abs(q - default)) * (np.linalg.norm(command) < 0.01),
                "termination": -100.0 * ((down[2] > -0.5) or end.qpos[2] < 0.4 or tangled),
                "collision": -0.1 * (_touching(model, before, "left_wrist_yaw_link", "left_hip_yaw_link")
                                     or _touching(model, before, "right_wrist_yaw_link", "right_hip_yaw_link")),
                "contact_force": -0.01 * sum(max(abs(f) - 500.0, 0.0) for f in forces),
                "joint_deviation_hip": -0.25 * np.sum(np.abs(q[hips] - default[hips]) * hip_weight),
                "joint_deviation_knee": -0.1 * np.sum(np.abs(q[knees] - default[knees])),
                "dof_pos_limits": -1.0 * np.sum(np.maximum(mid - half - q, 0) + np.maximum(q - mid - half, 0)),
                "pose": -0.1 * np.sum((q - default) ** 2),
            }
            assert set(expected) == set(terms)
            for name, value in expected.items():
                np.testing.assert_allclose(terms[name][i], value * task.ctrl_dt, rtol=1e-6, atol=1e-9, err_msg=f"{name} at step {step}")
                if abs(value) > 0:
                    compared.add(name)
    # the recorded states exercised the terms (a term that is always 0 here tests nothing)
    assert {"tracking_lin_vel", "orientation", "feet_slip", "feet_phase", "stand_still", "pose",
            "joint_deviation_hip", "joint_deviation_knee", "termination"} <= compared


def test_the_total_is_not_clipped_so_a_fall_costs():
    task = G1Velocity(2, seed=0, pushes=False)
    qpos = np.tile(task.default_qpos, (2, 1))
    qpos[1, 3:7] = [np.cos(np.pi / 4), np.sin(np.pi / 4), 0, 0]  # rolled 90 degrees: fallen
    task.sim.set_state(np.arange(2), qpos, np.zeros((2, task.sim.model.nv)))
    terms = task.reward_terms(np.zeros((2, 29), np.float32))
    np.testing.assert_array_equal(task.terminated(), [False, True])
    assert task.combine(terms)[1] < -1.9  # termination's -100 * dt is not clipped away


def test_pushes_and_randomisation_are_on_by_default():
    params = G1Velocity.Params()
    assert params.pushes and params.randomize and params.noise_level == 1.0
    task = G1Velocity(8, seed=0, model_variants=4)
    frictions = {round(float(m.geom_friction[m.geom("floor").id, 0]), 6) for m in task.sim.variants}
    assert len(frictions) == 4
    task.steps[:] = task.push_interval_steps - 1
    before = task.sim.qvel[:, 0:2].copy()
    task.steps += 1
    task._push()
    assert (np.linalg.norm(task.sim.qvel[:, 0:2] - before, axis=1) >= 0.1 - 1e-9).all()


def test_recovery_starts_fallen_from_a_bank_that_rarely_repeats_and_scores_success_when_up():
    task = G1Recovery(16, seed=0)
    assert (task.height < 0.5).all() and not task.success().any()  # no upright starts by default
    assert len(task.fallen_bank) >= 64
    starts = {tuple(task.sim.qpos[i, :7].round(4)) for i in range(16)}
    assert len(starts) == 16  # each start turned and moved: no two alike
    task.sim.set_state(np.array([0]), task.default_qpos[None], np.zeros((1, task.sim.model.nv)))
    terms = task.reward_terms(np.zeros((16, 29), np.float32))
    assert task.success()[0] and terms["upright"][0] == pytest.approx(task.ctrl_dt)
    assert {"torque", "dof_pos_limits"} <= set(terms) and terms["torque"][0] < 0


def test_motion_references_stay_within_limits_and_targets_follow_them():
    task = G1Motion(12, seed=5, walk_probability=0.0)
    refs = np.stack([task.motions.at(np.full(12, t)) for t in np.linspace(0, 10, 101)])
    assert (refs >= task.soft_low[12:] - 1e-9).all() and (refs <= task.soft_high[12:] + 1e-9).all()
    assert refs.std(axis=0).max(axis=1).min() > 0.05  # every environment's reference moves
    assert len(set(task.motions.kind.tolist())) == 3  # reaching, waving and turning all drawn
    # the hand targets are the palms' positions when the robot holds the reference pose
    obs = task.observe()
    qpos = task.sim.qpos.copy()
    qpos[:, 19:36] = task.reference
    task.sim.set_state(np.arange(12), qpos, np.zeros((12, task.sim.model.nv)))
    np.testing.assert_allclose(task.hand_positions(), np.concatenate([observation_field(obs, "left_hand"),
                                                                       observation_field(obs, "right_hand")], axis=1), atol=1e-6)
    assert task.hand_error().max() < 1e-6 and task.success().all()
    np.testing.assert_allclose(observation_field(obs, "torso"), task.reference[:, :3])


def test_the_motion_task_is_registered_with_gymnasium():
    env = envs.make_batched("rayworks/G1Motion-v0", 2, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, OBSERVATION_DIM)
    _, _, _, _, info = env.step(np.zeros((2, 29), np.float32))
    assert info["reward_terms"]["tracking_hands"].shape == (2,)
    env.close()
