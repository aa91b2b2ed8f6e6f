"""VSTA, variable-speed trajectory augmentation (TempoVLA): a demonstration re-timed to speed c.

Actions that compose linearly (end-effector position deltas, joint velocities) can be merged
(c > 1: the action of one new step is the displacement of c old ones) or split (c < 1: a step
covers a fraction of an old one) without changing where the motion goes. A demonstration is
first cut into motion-consistent chunks (a gripper event or a turn in the direction of motion
ends a chunk), and each chunk is re-timed on its own, so a merged step never straddles a grasp.

Re-timing is linear interpolation of the chunk's cumulative displacement D(t) (D(0) = 0,
D(k) = a_0 + ... + a_{k-1}, linear between frames) sampled on the grid offset, offset + c,
offset + 2c, ... up to the chunk's end: step j's action is D(s_{j+1}) - D(s_j). The sampler
draws the grid's offset online, so every original frame is the start of some re-timed step and
every frame's state is trained on at every speed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Action types whose consecutive actions add up to one action over the combined time.
COMPOSABLE = ("ee_delta", "joint_velocity")


class NotComposable(ValueError):
    """A demonstration's actions cannot be re-timed by merging and splitting."""


def check_composable(action_type: str) -> None:
    if action_type not in COMPOSABLE:
        raise NotComposable(f"action type {action_type!r} is not linearly composable, so VSTA cannot re-time it; "
                            f"re-timable types: {', '.join(COMPOSABLE)}")


def segment(motion: np.ndarray, gripper: np.ndarray, turn_degrees: float = 60.0, still: float = 1e-6) -> list[tuple[int, int]]:
    """Motion-consistent chunks [start, end) covering every frame: a new chunk starts where the
    gripper command changes or the direction of motion turns by more than `turn_degrees` from
    the chunk's mean direction so far. `motion` (T, D) are the composable actions, `gripper` (T,)
    the gripper command; frames that barely move (norm <= `still`) never start a chunk."""
    motion, gripper = np.asarray(motion, dtype=np.float64), np.asarray(gripper)
    cos_limit = math.cos(math.radians(turn_degrees))
    chunks, start, heading = [], 0, np.zeros(motion.shape[1])
    for t in range(len(motion)):
        norm = np.linalg.norm(motion[t])
        turned = False
        if norm > still and np.linalg.norm(heading) > still:
            turned = float(motion[t] @ heading) / (norm * np.linalg.norm(heading)) < cos_limit
        if t > start and (gripper[t] != gripper[t - 1] or turned):
            chunks.append((start, t))
            start, heading = t, np.zeros(motion.shape[1])
        heading = heading + motion[t]
    if len(motion):
        chunks.append((start, len(motion)))
    return chunks


def cumulative(motion: np.ndarray) -> np.ndarray:
    """D(0..T): the displacement after each whole frame, (T + 1, D)."""
    return np.concatenate([np.zeros((1, motion.shape[1])), np.cumsum(motion, axis=0)])


def displacement(cum: np.ndarray, t: np.ndarray) -> np.ndarray:
    """D at fractional times `t` (linear within a frame: a frame's action is spread evenly over it)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0, len(cum) - 1)
    whole = np.minimum(np.floor(t).astype(np.int64), len(cum) - 2)
    frac = (t - whole)[..., None]
    return cum[whole] + frac * (cum[whole + 1] - cum[whole])


def retime(motion: np.ndarray, speed: float, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's composable actions (T, D) at `speed`, its grid starting at `offset` (0 <= offset
    < T): (the new actions (M, D), the original frame each new step starts in (M,)). M is
    ceil((T - offset) / speed); the actions sum to D(T) - D(offset), the whole chunk's
    displacement when offset is 0; the last step covers what is left of the chunk."""
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    motion = np.asarray(motion, dtype=np.float64)
    length = len(motion)
    if not 0 <= offset < length:
        raise ValueError(f"offset must be in [0, {length}), got {offset}")
    steps = math.ceil((length - offset) / speed - 1e-9)
    grid = np.minimum(offset + speed * np.arange(steps + 1), length)
    points = displacement(cumulative(motion), grid)
    return np.diff(points, axis=0), np.floor(grid[:-1]).astype(np.int64)


def retime_episode(motion: np.ndarray, gripper: np.ndarray, speed: float, action_type: str = "ee_delta",
                   turn_degrees: float = 60.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole demonstration at `speed`, chunk by chunk: (motion (M, D), gripper (M,), source frame (M,))."""
    check_composable(action_type)
    parts = []
    for start, end in segment(motion, gripper, turn_degrees):
        actions, frames = retime(motion[start:end], speed)
        parts.append((actions, np.asarray(gripper)[start + frames], start + frames))
    return tuple(np.concatenate(p) for p in zip(*parts))


@dataclasses.dataclass
class Demonstration:
    """One episode: the state the policy sees at each frame, the composable motion and the gripper command."""

    states: np.ndarray  # (T, S)
    motion: np.ndarray  # (T, D)
    gripper: np.ndarray  # (T,)
    images: np.ndarray | None = None  # (T, H, W, 3) uint8 camera frames, when recorded


class VSTASampler:
    """Training examples at random speeds, re-timed online: draw a frame t uniformly over all
    frames of all demonstrations and a speed c; the example is (state at t, c) -> (the re-timed
    step starting at t: D(min(t + c, chunk end)) - D(t), the gripper command at t). That is the
    first step of the chunk re-timed with its grid offset to t, so every frame is a start."""

    def __init__(self, demos: list[Demonstration], speeds: tuple[float, ...], action_type: str = "ee_delta",
                 turn_degrees: float = 60.0, seed: int = 0):
        check_composable(action_type)
        self.demos, self.speeds, self.rng = demos, np.asarray(speeds, dtype=np.float64), np.random.default_rng(seed)
        self.frames = np.array([(d, t) for d, demo in enumerate(demos) for t in range(len(demo.motion))])
        self.chunk_end = [np.zeros(len(demo.motion), dtype=np.int64) for demo in demos]
        self.cum = [cumulative(np.asarray(demo.motion, dtype=np.float64)) for demo in demos]
        for d, demo in enumerate(demos):
            for start, end in segment(demo.motion, demo.gripper, turn_degrees):
                self.chunk_end[d][start:end] = end

    def window(self, demo: int, frame: int, speed: float, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The `horizon` re-timed steps at `speed` from `frame` on (action chunking's target):
        (motion (H, D), gripper (H,), valid (H,)). Each step starts where the last ended; at a
        chunk's end the grid restarts there, as in `retime_episode`; steps past the
        demonstration's end are padded (no motion, the last gripper command) and not valid."""
        cum, gripper = self.cum[demo], self.demos[demo].gripper
        length = len(gripper)
        motion, grip, valid = np.zeros((horizon, cum.shape[1])), np.full(horizon, float(gripper[-1])), np.zeros(horizon, dtype=bool)
        position = float(frame)
        for k in range(horizon):
            if position >= length:
                break
            start = int(position)
            following = min(position + speed, float(self.chunk_end[demo][start]))
            motion[k] = displacement(cum, following) - displacement(cum, position)
            grip[k], valid[k] = gripper[start], True
            position = following
        return motion, grip, valid

    def example(self, demo: int, frame: int, speed: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(state, motion, gripper) of the step at `speed` starting at `frame` of demonstration `demo`."""
        motion, gripper, _ = self.window(demo, frame, speed, 1)
        return self.demos[demo].states[frame], motion[0], float(gripper[0])

    def sample(self, n: int, horizon: int = 1) -> dict[str, np.ndarray]:
        """n examples of `horizon` steps: state (n, S), speed (n,), motion (n, H, D), gripper
        (n, H), valid (n, H), where each came from (demo, frame), and the camera frame (image)
        when the demonstrations have them."""
        picks = self.frames[self.rng.integers(len(self.frames), size=n)]
        speeds = self.rng.choice(self.speeds, size=n)
        windows = [self.window(int(d), int(t), float(c), horizon) for (d, t), c in zip(picks, speeds)]
        batch = {"state": np.stack([self.demos[d].states[t] for d, t in picks]).astype(np.float32), "speed": speeds.astype(np.float32),
                 "motion": np.stack([w[0] for w in windows]).astype(np.float32),
                 "gripper": np.stack([w[1] for w in windows]).astype(np.float32),
                 "valid": np.stack([w[2] for w in windows]), "demo": picks[:, 0], "frame": picks[:, 1]}
        if self.demos and self.demos[0].images is not None:
            batch["image"] = np.stack([self.demos[d].images[t] for d, t in picks])
        return batch
