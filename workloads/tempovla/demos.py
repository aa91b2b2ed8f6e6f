"""Demonstrations for TempoVLA: the scripted expert's PandaPickCube episodes (end-effector
deltas or joint velocities, as `DemoConfig.action_type` says), written in LeRobot's dataset
v3.0 layout and read back.

The layout (what the `lerobot` package reads; the package itself pins an older torch than this
project, so the layout is written here from its documented schema):

    meta/info.json                        codebase_version "v3.0", fps, features, splits, paths
    meta/stats.json                       per feature: min, max, mean, std, count
    meta/tasks.parquet                    the task strings (index) and their task_index
    meta/episodes/chunk-000/file-000.parquet  one row per episode: length, data file, frame range
    data/chunk-000/file-000.parquet       one row per frame: observation.state, action, timestamp,
                                          frame_index, episode_index, index, task_index

    videos/observation.images.front/chunk-000/file-000.mp4   (with `image_size` > 0) every
                                          episode's camera frames, one after another (H.264 by PyAV)

Without `image_size` no camera frames are rendered: `video_path` is null and no image feature
is listed, which is how the layout records their absence. With it, the video feature lists its
codec and size, and each episode's row says where its frames are (`videos/<key>/from_timestamp`
and `to_timestamp`). `info.json` also carries a `rayworks` block (action type, environment and
its parameters) that readers of the layout ignore.
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
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
VIDEO_KEY = "observation.images.front"
TASK_TEXT = "pick up the cube and carry it to the target"
# Each recordable action type: the environment's action mode that plays it and the action's names.
ACTION_TYPES = {
    "ee_delta": ("ee", ["ee_dx", "ee_dy", "ee_dz", "gripper"]),
    "joint_velocity": ("joint_velocity", [f"joint{i}_velocity" for i in range(1, 8)] + ["gripper"]),
}


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
    action_type: str = "ee_delta"  # what is recorded: ee_delta (end-effector deltas) or joint_velocity (arm joint velocities)
    image_size: int = 0  # > 0: also record the front camera at this size, written as video (needs OpenGL: MUJOCO_GL=egl)

    def validate(self) -> None:
        from workloads.config import require

        require(self.action_type in ACTION_TYPES, "action_type", f"expected one of {', '.join(ACTION_TYPES)}, got {self.action_type!r}")
        require(self.image_size >= 0 and self.image_size % 8 == 0, "image_size", f"must be 0 or a multiple of 8, got {self.image_size}")


@dataclasses.dataclass
class Episode:
    states: np.ndarray  # (T, S) float32, the policy's observation
    actions: np.ndarray  # (T, A) float32: the motion (ee delta or joint velocities), then the gripper command
    seed: int
    images: np.ndarray | None = None  # (T, H, W, 3) uint8 camera frames, when recorded


def record_batch(config: DemoConfig, seed: int, env_params: dict) -> tuple[list[Episode], int]:
    """One batch of environments driven by the expert until each succeeds (and holds) or runs out
    of steps: (the successful episodes, how many failed)."""
    from envs.panda import PandaPickCube
    from workloads.tempovla.expert import ExpertConfig, PickCubeExpert

    task = PandaPickCube(config.envs_per_batch, seed=seed, **{**env_params, "action_mode": ACTION_TYPES[config.action_type][0],
                                                              "episode_steps": config.max_steps + 1})
    expert = PickCubeExpert(config.envs_per_batch, task.params.ee_step, ExpertConfig(max_action=config.max_action))
    states, actions, frames = [], [], []
    succeeded_at = np.full(config.envs_per_batch, -1)
    for step in range(config.max_steps):
        states.append(task.observe())
        if config.image_size:  # rendering is the slow part: skip environments whose kept episode has ended
            frames.append(task.camera_frames(config.image_size, (succeeded_at < 0) | (step <= succeeded_at + config.hold_steps)))
        action = expert.act(task)
        actions.append(action)
        task.step(action)
        newly = (succeeded_at < 0) & task.success()
        succeeded_at[newly] = step
        if np.all((succeeded_at >= 0) & (step >= succeeded_at + config.hold_steps)):
            break
    task.close()
    states, actions = np.stack(states, axis=1), np.stack(actions, axis=1)
    frames = np.stack(frames, axis=1) if frames else None
    kept = [Episode(states[i, : end + 1], actions[i, : end + 1], seed, None if frames is None else frames[i, : end + 1])
            for i, at in enumerate(succeeded_at) if at >= 0 for end in [min(at + config.hold_steps, len(actions[i]) - 1)]]
    return kept, int(np.sum(succeeded_at < 0))


def feature(dtype: str, shape: list[int], names=None) -> dict:
    return {"dtype": dtype, "shape": shape, "names": names}


def write_dataset(root: Path, episodes: list[Episode], fps: int, env_params: dict, extra: dict | None = None,
                  action_type: str = "ee_delta") -> Path:
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
    videos = {}
    if episodes[0].images is not None:  # every episode's frames in one file, in frame order
        frames = np.concatenate([e.images for e in episodes])
        path = root / VIDEO_PATH.format(video_key=VIDEO_KEY, chunk_index=0, file_index=0)
        write_video(path, frames, fps)
        videos = {f"videos/{VIDEO_KEY}/chunk_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
                  f"videos/{VIDEO_KEY}/file_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
                  f"videos/{VIDEO_KEY}/from_timestamp": pa.array(starts / fps),
                  f"videos/{VIDEO_KEY}/to_timestamp": pa.array((starts + np.asarray(lengths)) / fps)}
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
        **videos,
    }), root / EPISODES_PATH.format(chunk_index=0, file_index=0))
    pq.write_table(pa.table({"task_index": pa.array([0], type=pa.int64()), "task": [TASK_TEXT]}), root / "meta/tasks.parquet")
    features = {
        "observation.state": feature("float32", [state.shape[1]]),
        "action": feature("float32", [action.shape[1]], ACTION_TYPES[action_type][1]),
        "timestamp": feature("float32", [1]), "frame_index": feature("int64", [1]), "episode_index": feature("int64", [1]),
        "index": feature("int64", [1]), "task_index": feature("int64", [1]),
    }
    if videos:
        height, width = episodes[0].images.shape[1:3]
        features[VIDEO_KEY] = {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                               "info": {"video.height": height, "video.width": width, "video.codec": "h264",
                                        "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                                        "video.channels": 3, "has_audio": False}}
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": "franka_panda", "total_episodes": len(episodes),
            "total_frames": total, "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if videos else None, "features": features,
            "rayworks": {"action_type": action_type, "env": "PandaPickCube",
                         "env_params": {**env_params, "action_mode": ACTION_TYPES[action_type][0]},
                         **(extra or {})}}
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    stats = {name: column_stats(values) for name, values in (("observation.state", state), ("action", action))}
    if videos:
        stats[VIDEO_KEY] = image_stats(frames)
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=2))
    return root


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """(N, H, W, 3) uint8 frames as an H.264 MP4 (yuv420p, what players and LeRobot's decoders read)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "g": "2"}  # near-lossless, and a keyframe every other frame so any frame seeks fast
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def read_video(path: Path) -> np.ndarray:
    """A video's frames as (N, H, W, 3) uint8."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def image_stats(frames: np.ndarray) -> dict:
    """Per channel, values in [0, 1], shaped (3, 1, 1) as LeRobot keeps image statistics."""
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    as_chw = lambda values: [[[float(v)]] for v in values]  # noqa: E731
    return {"min": as_chw(pixels.min(0)), "max": as_chw(pixels.max(0)), "mean": as_chw(pixels.mean(0)),
            "std": as_chw(pixels.std(0)), "count": [len(frames)]}


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
    """The dataset's episodes as VSTA demonstrations (motion = every action column but the last,
    gripper = the last, the command), and its info."""
    import pyarrow.parquet as pq

    info = read_info(root)
    table = pq.read_table(Path(root) / "data").sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])
    state = np.asarray(table["observation.state"].to_pylist(), dtype=np.float32)
    action = np.asarray(table["action"].to_pylist(), dtype=np.float32)
    episode = table["episode_index"].to_numpy()
    frames = episode_frames(Path(root), info) if VIDEO_KEY in info["features"] else {}
    demos = []
    for index in np.unique(episode):
        rows = episode == index
        demos.append(Demonstration(state[rows], action[rows, :-1], action[rows, -1], frames.get(int(index))))
    return demos, info


def episode_frames(root: Path, info: dict) -> dict[int, np.ndarray]:
    """Each episode's camera frames, found through its row's video file and timestamps."""
    import pyarrow.parquet as pq

    episodes = pq.read_table(root / "meta/episodes").to_pydict()
    fps, decoded = info["fps"], {}
    out = {}
    for i, index in enumerate(episodes["episode_index"]):
        where = (episodes[f"videos/{VIDEO_KEY}/chunk_index"][i], episodes[f"videos/{VIDEO_KEY}/file_index"][i])
        if where not in decoded:
            path = root / info["video_path"].format(video_key=VIDEO_KEY, chunk_index=where[0], file_index=where[1])
            if not path.is_file():
                raise DatasetLayoutError(f"{path}: the video that episode {index} names is missing")
            decoded[where] = read_video(path)
        start = round(episodes[f"videos/{VIDEO_KEY}/from_timestamp"][i] * fps)
        end = round(episodes[f"videos/{VIDEO_KEY}/to_timestamp"][i] * fps)
        out[int(index)] = decoded[where][start:end]
    return out
