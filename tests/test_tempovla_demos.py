"""TempoVLA's demonstrations: the Panda's end-effector mode moves the gripper as commanded (and
its tracking gap is what the sensor says), the scripted expert stays within half the action
bound, its episodes land in LeRobot's v3.0 layout that `datasets` reads, generation runs as
cached Ray tasks, and bad input is refused by name."""

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from envs.panda import PandaPickCube
from workloads.config import ConfigError, load_config
from workloads.tempovla.demos import DatasetLayoutError, DemoConfig, load_demonstrations, read_info, record_batch, write_dataset
from workloads.tempovla.vsta import retime_episode


def test_end_effector_mode_moves_the_gripper_as_commanded():
    task = PandaPickCube(2, seed=0, action_mode="ee")
    assert task.action_dim == 4
    start = task.gripper.copy()
    action = np.array([[0.5, 0.0, 0.0, 1.0], [0.0, -0.5, 0.3, 1.0]], dtype=np.float32)
    gaps = []
    for _ in range(40):
        before = task.gripper.copy()
        task.step(action)
        reached = task.gripper - before
        gaps.append(np.linalg.norm(task.params.ee_step * action[:, :3] - reached, axis=1))
        np.testing.assert_allclose(task.tracking_gap(), gaps[-1], atol=1e-9)  # the env's gap is the sensor's
    moved = task.gripper - start
    commanded = 40 * task.params.ee_step * action[:, :3]
    # the arm lags its targets but follows: most of the commanded path, in the commanded direction
    cos = np.sum(moved * commanded, axis=1) / (np.linalg.norm(moved, axis=1) * np.linalg.norm(commanded, axis=1))
    assert np.all(cos > 0.95) and np.all(np.linalg.norm(moved, axis=1) > 0.6 * np.linalg.norm(commanded, axis=1)), moved
    assert np.mean(gaps[-10:]) < np.mean(np.linalg.norm(task.params.ee_step * action[:, :3], axis=1))  # steady motion tracks


def test_the_expert_succeeds_within_half_the_action_bound_so_speed_two_fits():
    episodes, failed = record_batch(DemoConfig(envs_per_batch=8), seed=1, env_params={})
    assert len(episodes) >= 6 and failed == len(range(8)) - len(episodes)
    motion = np.concatenate([e.actions[:, :3] for e in episodes])
    assert np.linalg.norm(motion, axis=1).max() <= 0.5 + 1e-5
    for episode in episodes:
        fast, gripper, _ = retime_episode(episode.actions[:, :3], episode.actions[:, 3], 2.0)
        assert np.abs(fast).max() <= 1.0 and set(np.unique(gripper)) == {-1.0, 1.0}  # grasped, and within the bound


def test_joint_velocity_mode_moves_the_targets_by_velocity_times_dt_and_measures_the_gap_by_kinematics():
    import mujoco

    task = PandaPickCube(2, seed=0, action_mode="joint_velocity")
    assert task.action_dim == 8
    action = np.zeros((2, 8), dtype=np.float32)
    action[0, 1], action[1, 3], action[:, 7] = 0.5, -0.4, 1.0
    for _ in range(10):
        targets, qpos, before = task.ctrl[:, :7].copy(), task.sim.qpos.copy(), task.gripper.copy()
        task.step(action)
        expected = np.clip(targets + task.params.joint_velocity_limit * task.ctrl_dt * action[:, :7], task.ctrl_low[:7], task.ctrl_high[:7])
        np.testing.assert_allclose(task.ctrl[:, :7], expected, atol=1e-12)
        # the commanded gripper motion, by forward kinematics on a separate MjData
        data = mujoco.MjData(task.sim.model)
        commanded = []
        for i in range(2):
            ends = []
            for q in (qpos[i], np.r_[qpos[i, :7] + task.params.joint_velocity_limit * task.ctrl_dt * action[i, :7], qpos[i, 7:]]):
                data.qpos[:] = q
                mujoco.mj_forward(task.sim.model, data)
                ends.append(data.site("gripper").xpos.copy())
            commanded.append(ends[1] - ends[0])
        np.testing.assert_allclose(task.tracking_gap(), np.linalg.norm(np.array(commanded) - (task.gripper - before), axis=1), atol=1e-9)


def test_the_joint_velocity_expert_records_eight_wide_actions_within_half_the_bound():
    episodes, _ = record_batch(DemoConfig(envs_per_batch=6, action_type="joint_velocity"), seed=1, env_params={})
    assert len(episodes) >= 4
    actions = np.concatenate([e.actions for e in episodes])
    assert actions.shape[1] == 8 and np.abs(actions[:, :7]).max() <= 0.5 + 1e-5 and set(np.unique(actions[:, 7])) == {-1.0, 1.0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    episodes, _ = record_batch(DemoConfig(envs_per_batch=6), seed=2, env_params={})
    return write_dataset(tmp_path_factory.mktemp("demos") / "pick", episodes, 50, {})


def test_the_dataset_follows_lerobots_v3_layout(dataset):
    import datasets

    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50 and info["video_path"] is None
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    frames = pq.read_table(dataset / "data/chunk-000/file-000.parquet")
    episodes = pq.read_table(dataset / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert info["total_frames"] == frames.num_rows and info["total_episodes"] == len(episodes["episode_index"])
    assert info["splits"] == {"train": f"0:{info['total_episodes']}"}
    for name, spec in info["features"].items():  # every listed feature is a column of that shape
        column = frames[name].to_pylist()
        assert (len(column[0]) if isinstance(column[0], list) else 1) == spec["shape"][0], name
    # episodes index their frames: contiguous ranges whose lengths add up
    assert episodes["dataset_from_index"][0] == 0 and episodes["dataset_to_index"][-1] == frames.num_rows
    assert all(b - a == n for a, b, n in zip(episodes["dataset_from_index"], episodes["dataset_to_index"], episodes["length"]))
    frame_index, episode_index = frames["frame_index"].to_numpy(), frames["episode_index"].to_numpy()
    assert np.all(frame_index[episode_index == 1] == np.arange(episodes["length"][1]))
    np.testing.assert_allclose(frames["timestamp"].to_numpy(), frame_index / 50, atol=1e-6)
    stats = json.loads((dataset / "meta/stats.json").read_text())
    actions = np.asarray(frames["action"].to_pylist())
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), atol=1e-5)
    assert stats["action"]["count"] == [frames.num_rows] and set(stats) == {"observation.state", "action"}
    assert pq.read_table(dataset / "meta/tasks.parquet").to_pydict()["task_index"] == [0]
    read = datasets.load_dataset("parquet", data_files=str(dataset / "data/*/*.parquet"), split="train")
    assert read.num_rows == frames.num_rows and read.features["action"].length == 4
    demos, _ = load_demonstrations(dataset)
    assert [len(d.motion) for d in demos] == episodes["length"]


def test_other_layouts_and_bad_speeds_are_refused_by_name(dataset, tmp_path):
    from pipelines.tempovla import Config

    with pytest.raises(DatasetLayoutError, match="meta/info.json is missing"):
        read_info(tmp_path)
    old = tmp_path / "old"
    (old / "meta").mkdir(parents=True)
    (old / "meta/info.json").write_text(json.dumps({"codebase_version": "v2.1", "features": {}}))
    with pytest.raises(DatasetLayoutError, match="v2.1"):
        read_info(old)
    with pytest.raises(ConfigError, match="eval_speeds: speed 3"):
        load_config(Config, None, ["eval_speeds=[1.0,3.0]"])
    with pytest.raises(ConfigError, match="augment"):
        load_config(Config, None, ["augment=mixup"])
    clamped = load_config(Config, None, ["eval_speeds=[1.0,3.0]", "out_of_range=clamp"])
    from pipelines.tempovla import command_speed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert command_speed(clamped, 3.0) == 2.0
    assert "outside the trained range" in str(caught[0].message)
    # a dataset whose actions are joint targets cannot be re-timed
    joints = tmp_path / "joints"
    write_dataset(joints, load_demonstrations_as_episodes(dataset), 50, {})
    info = json.loads((joints / "meta/info.json").read_text())
    info["rayworks"]["action_type"] = "joint_position"
    (joints / "meta/info.json").write_text(json.dumps(info))
    from pipelines.tempovla import dataset_for

    with pytest.raises(ConfigError, match="dataset: action type 'joint_position' is not linearly composable"):
        dataset_for(load_config(Config, None, [f"dataset={joints}"]))
    # an image policy needs camera frames: asked for without them, refused before anything runs
    with pytest.raises(ConfigError, match="policy.inputs: image needs camera frames: set demos.image_size"):
        load_config(Config, None, ["policy.inputs=image"])
    with pytest.raises(ConfigError, match="has no 'observation.images.front' video feature"):
        dataset_for(load_config(Config, None, [f"dataset={dataset}", "policy.inputs=image"]))
    with pytest.raises(ConfigError, match="policy.execute: must be in"):
        load_config(Config, None, ["policy.chunk=2", "policy.execute=3"])
    with pytest.raises(ConfigError, match="demos.image_size: must be 0 or a multiple of 8"):
        load_config(Config, None, ["demos.image_size=30"])


def load_demonstrations_as_episodes(root: Path) -> list:
    from workloads.tempovla.demos import Episode

    demos, _ = load_demonstrations(root)
    return [Episode(d.states, np.concatenate([d.motion, d.gripper[:, None]], axis=1), 0) for d in demos]


def test_generation_runs_as_ray_tasks_and_is_cached(local_ray, tmp_path):
    from pipelines.tempovla import generate_demos

    config = DemoConfig(episodes=10, envs_per_batch=6)
    lines = []
    first = generate_demos(config, 3, tmp_path / "demos", say_line=lines.append)
    info = read_info(first)
    assert info["total_episodes"] == 10 and info["rayworks"]["expert_success_rate"] > 0.5 and len(lines) == 1
    stamp = (first / "meta/info.json").stat().st_mtime_ns
    again = generate_demos(config, 3, tmp_path / "demos", say_line=lines.append)
    assert again == first and (again / "meta/info.json").stat().st_mtime_ns == stamp and len(lines) == 1  # not rebuilt


def test_a_video_round_trips_through_pyav_within_the_codecs_loss(tmp_path):
    from workloads.tempovla.demos import read_video, write_video

    # smooth moving gradients with a bright square: what a camera sees, and what H.264 keeps well
    y, x = np.mgrid[0:32, 0:32]
    frames = np.stack([np.stack([x * 4 + t, y * 4, np.full_like(x, 128)], axis=-1) for t in range(20)]).astype(np.uint8)
    frames[:, 10:18, 10:18] = [255, 40, 40]
    write_video(tmp_path / "v.mp4", frames, 50)
    decoded = read_video(tmp_path / "v.mp4")
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 4  # near-lossless (crf 18), not bit-exact
    inside = decoded[:, 12:16, 12:16].reshape(-1, 3)
    assert inside[:, 0].min() > 220 and inside[:, 1].max() < 80  # the square is still red


def test_camera_frames_are_recorded_by_ray_tasks_as_video_in_the_layout(local_ray, tmp_path):
    """Rendering needs OpenGL: the generation tasks get MUJOCO_GL=egl from the pipeline, not the test."""
    import av

    from pipelines.tempovla import generate_demos
    from workloads.tempovla.demos import VIDEO_KEY

    root = generate_demos(DemoConfig(episodes=2, envs_per_batch=2, image_size=32), 5, tmp_path / "demos", say_line=lambda _: None)
    info = read_info(root)
    video = info["features"][VIDEO_KEY]
    assert video["dtype"] == "video" and video["shape"] == [32, 32, 3] and video["info"]["video.fps"] == info["fps"]
    path = root / info["video_path"].format(video_key=VIDEO_KEY, chunk_index=0, file_index=0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 32, 32)
        assert sum(1 for _ in container.decode(video=0)) == info["total_frames"]  # one frame per data row
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    fps = info["fps"]
    assert [round((b - a) * fps) for a, b in zip(episodes[f"videos/{VIDEO_KEY}/from_timestamp"],
                                                 episodes[f"videos/{VIDEO_KEY}/to_timestamp"])] == episodes["length"]
    stats = json.loads((root / "meta/stats.json").read_text())[VIDEO_KEY]
    assert np.asarray(stats["mean"]).shape == (3, 1, 1) and 0 < np.asarray(stats["mean"]).min() < 1
    demos, _ = load_demonstrations(root)
    assert [len(d.images) for d in demos] == episodes["length"] and demos[0].images.dtype == np.uint8
    assert demos[0].images[0].std() > 10  # a picture, not a blank frame


def test_an_image_policy_is_evaluated_by_rollout_workers_that_render(local_ray):
    """The observation ends with the camera frame; the actor cuts it off and the policy reads it."""
    import torch

    from actors.rollout import RolloutGroup
    from pipelines.tempovla import ENV_ID, RENDERING
    from workloads.tempovla.policy import PROPRIO_INDEX, SpeedActorSpec, SpeedCommand

    spec = SpeedActorSpec(len(PROPRIO_INDEX), [16], "film", SpeedCommand(speed=1.0), inputs="image", image_size=16)
    torch.manual_seed(0)
    weights = spec.build().state_dict()
    group = RolloutGroup(ENV_ID, 1, 2, 0, {"action_mode": "ee", "image_size": 16, "episode_steps": 5}, spec,
                         pin_threads=False, runtime_env=RENDERING)
    try:
        episodes = group.evaluate(weights, 6)
    finally:
        group.shutdown()
    assert episodes["length"] == [5, 5] and len(episodes["metrics/tracking_gap_mm"]) == 2
