"""Demonstrations for TempoVLA: the scripted expert's PandaPickCube episodes (end-effector
mode), written in LeRobot's dataset v3.0 layout and read back.

The layout (what the `lerobot` package reads; the package itself pins an older torch than this
project, so the layout is written here from its documented schema):

    meta/info.json                        codebase_version "v3.0", fps, features, splits, paths
    meta/stats.json                       per feature: min, max, mean, std, count
    meta/tasks.parquet                    the task strings (index) and their task_index
    meta/episodes/chunk-000/file-000.parquet  one row per episode: length, data file, frame range
    data/chunk-000/file-000.parquet       one row per frame: observation.state, action, timestamp,
                                          frame_index, episode_index, index, task_index

No camera frames are rendered for state-based policies: `video_path` is null and no image
feature is listed, which is how the layout records their absence. `info.json` also carries a
`rayworks` block (action type, environment and its parameters) that readers of the layout ignore.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from workloads.tempovla.vsta import Demonstration

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASK_TEXT = "pick up the cube and carry it to the target"
ACTION_NAMES = ["ee_dx", "ee_dy", "ee_dz", "gripper"]


class DatasetLayoutError(ValueError):
    """A directory that is not a LeRobot v3.0 dataset of this kind."""


@dataclasses.dataclass
class DemoConfig:
    """What the scripted expert records."""

    episodes: int = 64  # successful demonstrations kept
    envs_per_batch: int = 16  # environments one generation task steps together
    max_steps: int = 400  # a demonstration that has not succeeded by then is dropped
    hold_steps: int = 5  # frames kept after the cube first reaches the target
    max_action: float = 0.5  # the expert's largest action at 1x (of the bound 1)


@dataclasses.dataclass
class Episode:
    states: np.ndarray  # (T, S) float32, the policy's observation
    actions: np.ndarray  # (T, 4) float32: ee delta (units of ee_step), gripper command
    seed: int


def record_batch(config: DemoConfig, seed: int, env_params: dict) -> tuple[list[Episode], int]:
    """One batch of environments driven by the expert until each succeeds (and holds) or runs out
    of steps: (the successful episodes, how many failed)."""
    from envs.panda import PandaPickCube
    from workloads.tempovla.expert import ExpertConfig, PickCubeExpert

    task = PandaPickCube(config.envs_per_batch, seed=seed, **{**env_params, "action_mode": "ee",
                                                              "episode_steps": config.max_steps + 1})
    expert = PickCubeExpert(config.envs_per_batch, task.params.ee_step, ExpertConfig(max_action=config.max_action))
    states, actions = [], []
    succeeded_at = np.full(config.envs_per_batch, -1)
    for step in range(config.max_steps):
        states.append(task.observe())
        action = expert.act(task)
        actions.append(action)
        task.step(action)
        newly = (succeeded_at < 0) & task.success()
        succeeded_at[newly] = step
        if np.all((succeeded_at >= 0) & (step >= succeeded_at + config.hold_steps)):
            break
    task.close()
    states, actions = np.stack(states, axis=1), np.stack(actions, axis=1)
    kept = [Episode(states[i, : end + 1], actions[i, : end + 1], seed)
            for i, at in enumerate(succeeded_at) if at >= 0 for end in [min(at + config.hold_steps, len(actions[i]) - 1)]]
    return kept, int(np.sum(succeeded_at < 0))


def feature(dtype: str, shape: list[int], names=None) -> dict:
    return {"dtype": dtype, "shape": shape, "names": names}


def write_dataset(root: Path, episodes: list[Episode], fps: int, env_params: dict, extra: dict | None = None) -> Path:
    """`episodes` as a LeRobot v3.0 dataset at `root` (one data file and one episodes file: the
    layout splits files at 100 MB, far above these)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    if not episodes:
        raise ValueError("no successful demonstrations to write")
    lengths = [len(e.actions) for e in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    state = np.concatenate([e.states for e in episodes]).astype(np.float32)
    action = np.concatenate([e.actions for e in episodes]).astype(np.float32)
    total = len(action)
    frame_index = np.concatenate([np.arange(n) for n in lengths])
    episode_index = np.repeat(np.arange(len(episodes)), lengths)
    data = pa.table({
        "observation.state": pa.array(list(state), type=pa.list_(pa.float32(), state.shape[1])),
        "action": pa.array(list(action), type=pa.list_(pa.float32(), action.shape[1])),
        "timestamp": pa.array((frame_index / fps).astype(np.float32)),
        "frame_index": pa.array(frame_index.astype(np.int64)),
        "episode_index": pa.array(episode_index.astype(np.int64)),
        "index": pa.array(np.arange(total, dtype=np.int64)),
        "task_index": pa.array(np.zeros(total, dtype=np.int64)),
    })
    (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(data, root / DATA_PATH.format(chunk_index=0, file_index=0))
    pq.write_table(pa.table({
        "episode_index": pa.array(np.arange(len(episodes), dtype=np.int64)),
        "tasks": pa.array([[TASK_TEXT]] * len(episodes), type=pa.list_(pa.string())),
        "length": pa.array(np.asarray(lengths, dtype=np.int64)),
        "data/chunk_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
        "data/file_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
        "dataset_from_index": pa.array(starts.astype(np.int64)),
        "dataset_to_index": pa.array((starts + lengths).astype(np.int64)),
        "meta/episodes/chunk_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
        "meta/episodes/file_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
        "seed": pa.array(np.asarray([e.seed for e in episodes], dtype=np.int64)),
    }), root / EPISODES_PATH.format(chunk_index=0, file_index=0))
    pq.write_table(pa.table({"task_index": pa.array([0], type=pa.int64()), "task": [TASK_TEXT]}), root / "meta/tasks.parquet")
    features = {
        "observation.state": feature("float32", [state.shape[1]]),
        "action": feature("float32", [action.shape[1]], ACTION_NAMES),
        "timestamp": feature("float32", [1]), "frame_index": feature("int64", [1]), "episode_index": feature("int64", [1]),
        "index": feature("int64", [1]), "task_index": feature("int64", [1]),
    }
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": "franka_panda", "total_episodes": len(episodes),
            "total_frames": total, "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
            "video_path": None, "features": features,
            "rayworks": {"action_type": "ee_delta", "env": "PandaPickCube", "env_params": {**env_params, "action_mode": "ee"},
                         **(extra or {})}}
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    stats = {name: column_stats(values) for name, values in (("observation.state", state), ("action", action))}
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=2))
    return root


def column_stats(values: np.ndarray) -> dict:
    return {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(), "count": [len(values)]}


def read_info(root: Path) -> dict:
    """`meta/info.json` of a LeRobot v3.0 dataset, or a DatasetLayoutError naming what is wrong."""
    path = Path(root) / "meta/info.json"
    if not path.is_file():
        raise DatasetLayoutError(f"{root}: not a LeRobot dataset ({path} is missing)")
    info = json.loads(path.read_text())
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise DatasetLayoutError(f"{path}: codebase_version is {info.get('codebase_version')!r}; this reader takes {CODEBASE_VERSION!r} "
                                 "(convert older datasets with lerobot's v2.1 -> v3.0 script)")
    for name in ("observation.state", "action"):
        if name not in info.get("features", {}):
            raise DatasetLayoutError(f"{path}: features has no {name!r}")
    return info


def load_demonstrations(root: Path) -> tuple[list[Demonstration], dict]:
    """The dataset's episodes as VSTA demonstrations (motion = the ee deltas, gripper = the
    command), and its info."""
    import pyarrow.parquet as pq

    info = read_info(root)
    table = pq.read_table(Path(root) / "data").sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])
    state = np.asarray(table["observation.state"].to_pylist(), dtype=np.float32)
    action = np.asarray(table["action"].to_pylist(), dtype=np.float32)
    episode = table["episode_index"].to_numpy()
    demos = []
    for index in np.unique(episode):
        rows = episode == index
        demos.append(Demonstration(state[rows], action[rows, :3], action[rows, 3]))
    return demos, info
