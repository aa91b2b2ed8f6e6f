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
