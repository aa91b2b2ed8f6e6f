"""The MuJoCo environments: models from the asset packages, spaces, seeding, Gymnasium's checker,
reward terms on constructed states, and the batched form's resets."""

import os
import subprocess
import sys
import warnings

import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.assets import AssetsMissing, scene_path
from envs.g1 import G1Velocity
from envs.mujoco_batch import random_quaternion, rotate_inverse
from envs.panda import PandaReach

IDS = list(envs.TASKS)
# 29 G1 joints; 7 Panda arm joints, and the fingers for pick-cube
ACTION_DIMS = {"rayworks/G1Velocity-v0": 29, "rayworks/G1Recovery-v0": 29, "rayworks/G1Motion-v0": 29, "rayworks/PandaReach-v0": 7,
               "rayworks/PandaPickCube-v0": 8}


@pytest.mark.parametrize("scene, package_dir", [("g1_feet_only", "mujoco_playground"), ("g1_full", "unitree_g1"),
                                                ("panda_cube", "franka_emika_panda")])
def test_models_load_from_the_asset_packages(scene, package_dir):
    path = scene_path(scene)
    assert "envpool_assets_mujoco" in str(path) and package_dir in str(path)
    model = mujoco.MjModel.from_xml_path(str(path))
    assert model.nu in (8, 29) and model.nkey >= 1


def test_an_unknown_scene_or_missing_package_is_named():
    with pytest.raises(KeyError, match="known scenes"):
        scene_path("g2")
    envs.assets.SCENES["absent"] = ("no_such_assets_package", "x.xml")
    try:
        with pytest.raises(AssetsMissing, match="pip install no-such-assets-package"):
            scene_path("absent")
    finally:
        del envs.assets.SCENES["absent"]


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_seeding_and_the_gymnasium_checker(env_id):
    env = gymnasium.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded observation boxes are deliberate
        check_env(env.unwrapped, skip_render_check=True)
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    other, _ = env.reset(seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert env.observation_space.contains(first)
    assert env.action_space.shape == (ACTION_DIMS[env_id],) and env.action_space.high.max() == 1.0
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == first.shape and np.isfinite(reward) and isinstance(terminated, bool)
    assert info["critic_obs"].shape[0] > obs.shape[0]  # the critic sees more than the policy
    env.close()


def test_reach_terms_on_constructed_states():
    task = PandaReach(2, seed=0)
    task.target[0] = task.gripper[0]  # exactly there
    task.target[1] = task.gripper[1] + np.array([0.3, 0.0, 0.0])
    terms = task.reward_terms(np.zeros((2, 7), np.float32))
    np.testing.assert_allclose(terms["reach"], [1.0, 1 - np.tanh(1.5)], rtol=1e-6)
    np.testing.assert_array_equal(terms["success"], [1.0, 0.0])
    np.testing.assert_array_equal(task.success(), [True, False])
    terms = task.reward_terms(np.ones((2, 7), np.float32))  # last action was 0: rate = -0.01 * 7
    np.testing.assert_allclose(terms["action_rate"], [-0.07, -0.07])


def test_rotate_inverse_matches_mujoco():
    rng = np.random.default_rng(0)
    quats, vectors = random_quaternion(rng, 5), rng.normal(size=(5, 3))
    for quat, vector, ours in zip(quats, vectors, rotate_inverse(quats, vectors)):
        conjugate, expected = np.zeros(4), np.zeros(3)
        mujoco.mju_negQuat(conjugate, quat)
        mujoco.mju_rotVecQuat(expected, vector, conjugate)
        np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_batched_env_resets_finished_envs_and_keeps_final_observations():
    env = gymnasium.make_vec("rayworks/PandaReach-v0", num_envs=3, vectorization_mode="vector_entry_point", episode_steps=4)
    obs, info = env.reset(seed=0)
    for step in range(4):
        obs, reward, terminated, truncated, info = env.step(np.zeros((3, 7), np.float32))
    assert truncated.all() and not terminated.any()  # a time-out is not a termination
    assert info["_final_obs"].all() and not np.array_equal(info["final_obs"], obs)
    np.testing.assert_array_equal(info["episode"]["length"], [4, 4, 4])
    assert set(info["episode"]) >= {"return", "success", "terms/reach"}
    fresh = env.unwrapped.task
    assert (fresh.steps == 0).all()  # the returned observation starts the next episode
    env.close()


def test_batched_velocity_env_terminates_falls_apart_from_time_outs():
    env = envs.make_batched("rayworks/G1Velocity-v0", 4, seed=0)
    env.reset(seed=0)
    terminated_seen = False
    for _ in range(150):  # random joint targets: the robot falls within a few seconds
        _, _, terminated, truncated, info = env.step(np.random.default_rng(1).uniform(-1, 1, (4, 29)))
        assert not truncated.any()
        if terminated.any():
            terminated_seen = True
            assert (info["episode"]["length"] < 1000).all()
            break
    assert terminated_seen


def test_unknown_task_parameters_are_named():
    with pytest.raises(TypeError, match="unknown parameter 'bogus'"):
        G1Velocity(1, bogus=1)


def test_render_mode_rgb_array_draws_the_scene_without_shadows():
    """A frame through Gymnasium's `render()` in a fresh process (MuJoCo reads MUJOCO_GL at import),
    as the PPO pipeline renders its rollout GIF; skipped where no EGL platform exists."""
    script = (
        "import gymnasium, mujoco, numpy as np, envs\n"
        "env = gymnasium.make('rayworks/PandaReach-v0', render_mode='rgb_array')\n"
        "env.reset(seed=0)\n"
        "frame = env.render()\n"
        "flags = env.unwrapped._renderer.scene.flags\n"
        "print(frame.shape, int(frame.std() > 5), int(flags[mujoco.mjtRndFlag.mjRND_SHADOW]),"
        " int(flags[mujoco.mjtRndFlag.mjRND_REFLECTION]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "MUJOCO_GL": "egl"},
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and ("EGL" in proc.stderr or "OpenGL" in proc.stderr):
        pytest.skip(f"no EGL here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["(240,", "320,", "3)", "1", "0", "0"], proc.stdout
