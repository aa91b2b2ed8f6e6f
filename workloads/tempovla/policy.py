"""TempoVLA's speed-conditioned policy for PandaPickCube in a composable action mode.

The policy maps (state, speed c) to the next `chunk` actions at that speed: each a motion (an
end-effector delta in units of the env's `ee_step`, or arm joint velocities in units of its
`joint_velocity_limit`, as the demonstrations were recorded) and a gripper logit. The speed
enters by feature modulation (FiLM: each hidden layer is scaled and shifted by a function of c,
initialised to the identity) or as a speed token (features of c concatenated to the state), as
`conditioning` says. With `chunk` > 1 (action chunking) a rollout runs `execute` actions of a
predicted chunk open-loop before it asks again.

The state is the speed-invariant part of the observation: positions only. Joint velocities and
the previous action scale with the speed, so a policy that read them would see, at 2x, states
that no 1x demonstration contains (the paper's policies read images, which carry no velocity).
With `inputs="image"` the policy reads the front camera's frame (a small CNN) and the robot's
own positions only (joints and gripper): where the cube and the target are, it must see.

`SpeedActor` is what rollout workers run: the policy with its speed fixed, scheduled from the
gripper-cube distance (fast in transit, slow near contact), or, for the 1x-only baseline,
imposed by scaling the 1x policy's motion at run time.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# PandaPickCube.observe(): q[:9], v[:9], gripper(3), box(3), box-gripper(3), target-box(3), box quat(4), last action
STATE_INDEX = np.r_[0:9, 18:34]  # positions: joints, gripper, cube, the two offsets, cube orientation
PROPRIO_INDEX = np.r_[0:9, 18:21]  # the robot's own positions: joints and gripper (what an image policy reads besides the frame)
BOX_TO_GRIPPER = slice(24, 27)  # within the observation
BOX_HEIGHT = 23  # the cube's z
RESTING_HEIGHT = 0.03 + 0.02  # the cube's centre on the table (half its height) plus a margin: below this it is not lifted
CONDITIONINGS = ("film", "token")
INPUTS = {"state": STATE_INDEX, "image": PROPRIO_INDEX}  # what the policy reads -> its state columns


def policy_state(obs, inputs: str = "state"):
    """The speed-invariant columns of PandaPickCube observations the policy reads (numpy or torch, (..., obs_dim))."""
    return obs[..., INPUTS[inputs]]


def speed_features(speed: torch.Tensor) -> torch.Tensor:
    """(n,) speeds -> (n, 3): log c carries ratios evenly (0.5x and 2x are symmetric about 1x)."""
    log = torch.log(speed)
    return torch.stack([log, log**2, speed - 1.0], dim=-1)


@dataclasses.dataclass
class PolicyConfig:
    """The speed-conditioned policy's shape."""

    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256])  # MLP layer sizes
    conditioning: str = "film"  # film (feature modulation) or token (speed features as input)
    chunk: int = 1  # actions predicted per call (action chunking when > 1)
    execute: int = 0  # actions of a chunk run before the next prediction (0: the whole chunk)
    inputs: str = "state"  # state (positions) or image (the front camera and the robot's own positions; needs demos.image_size)
    image_shift: int = 4  # image inputs: training frames are shifted by up to this many pixels (random-shift augmentation)

    def validate(self) -> None:
        from workloads.config import require

        require(self.conditioning in CONDITIONINGS, "conditioning", f"expected one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}")
        require(self.inputs in INPUTS, "inputs", f"expected one of {', '.join(INPUTS)}, got {self.inputs!r}")
        require(self.chunk >= 1, "chunk", "must be >= 1")
        require(0 <= self.execute <= self.chunk, "execute", f"must be in [0, chunk={self.chunk}]")


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, H, W, C) frames each shifted by up to `pad` pixels (edge-padded, then cropped back at a
    random offset): the augmentation image policies need when demonstrations are few (DrQ)."""
    if pad <= 0:
        return images
    n, height, width, _ = images.shape
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(height)[None, :])[:, :, None].expand(n, height, width)
    cols = (dx[:, None] + torch.arange(width)[None, :])[:, None, :].expand(n, height, width)
    shifted = padded[torch.arange(n)[:, None, None], :, rows, cols]  # (n, H, W, C)
    return shifted.to(images.dtype)


class ImageEncoder(nn.Module):
    """(n, H, W, 3) uint8 camera frames -> (n, features): three strided convolutions and a linear layer."""

    def __init__(self, size: int, features: int = 64):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.GELU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                                   nn.GELU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.GELU(), nn.Flatten())
        self.out = nn.Linear(32 * (size // 8) ** 2, features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return F.gelu(self.out(self.convs(x)))


class SpeedPolicy(nn.Module):
    """(state, speed[, image]) -> (motion (n, chunk, motion_dim), gripper logits (n, chunk));
    states normalised by the dataset's statistics; with `image_size` > 0 the camera frame's
    features join the state."""

    def __init__(self, state_dim: int, hidden: list[int], conditioning: str = "film",
                 state_mean: np.ndarray | None = None, state_std: np.ndarray | None = None, motion_dim: int = 3, chunk: int = 1,
                 image_size: int = 0):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}")
        self.conditioning, self.motion_dim, self.chunk, self.image_size = conditioning, motion_dim, chunk, image_size
        self.encoder = ImageEncoder(image_size) if image_size else None
        mean = torch.zeros(state_dim) if state_mean is None else torch.as_tensor(state_mean, dtype=torch.float32)
        std = torch.ones(state_dim) if state_std is None else torch.as_tensor(state_std, dtype=torch.float32)
        self.register_buffer("state_mean", mean)
        self.register_buffer("state_std", std.clamp_min(1e-3))
        extra = (3 if conditioning == "token" else 0) + (self.encoder.out.out_features if self.encoder else 0)
        sizes = [state_dim + extra, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        if conditioning == "film":
            self.film = nn.Linear(3, 2 * sum(hidden))
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)  # scale 1, shift 0: FiLM starts as the identity
        self.head = nn.Linear(hidden[-1], chunk * (motion_dim + 1))

    def forward(self, state: torch.Tensor, speed: torch.Tensor, image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = (state - self.state_mean) / self.state_std
        if self.encoder is not None:
            if image is None:
                raise ValueError("this policy reads camera frames: pass image (n, H, W, 3)")
            x = torch.cat([x, self.encoder(image)], dim=-1)
        features = speed_features(speed)
        if self.conditioning == "token":
            x = torch.cat([x, features], dim=-1)
            for layer in self.layers:
                x = F.gelu(layer(x))
        else:
            modulation = self.film(features).split([size for layer in self.layers for size in (layer.out_features,) * 2], dim=-1)
            for i, layer in enumerate(self.layers):
                x = F.gelu(layer(x) * (1 + modulation[2 * i]) + modulation[2 * i + 1])
        out = self.head(x).view(len(x), self.chunk, self.motion_dim + 1)
        return out[..., : self.motion_dim], out[..., self.motion_dim]


def bc_loss(policy: nn.Module, batch: dict[str, torch.Tensor], gripper_weight: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Behaviour cloning over a chunk of actions: squared error of the motion plus the gripper
    command's cross-entropy (open = +1 is the positive class), averaged over the chunk's steps
    that exist (`valid` (n, chunk), all of them when absent: a chunk may run past its
    demonstration's end). `motion` is (n, chunk, D), `gripper` (n, chunk)."""
    motion, logit = policy(batch["state"], batch["speed"], image=batch.get("image"))
    valid = batch.get("valid", torch.ones_like(batch["gripper"])).float()
    count = valid.sum().clamp_min(1.0)
    motion_loss = (((motion - batch["motion"]) ** 2).mean(-1) * valid).sum() / count
    gripper_loss = (F.binary_cross_entropy_with_logits(logit, (batch["gripper"] > 0).float(), reduction="none") * valid).sum() / count
    loss = motion_loss + gripper_weight * gripper_loss
    return loss, {"motion_mse": float(motion_loss.detach()), "gripper_bce": float(gripper_loss.detach())}


@dataclasses.dataclass
class SpeedCommand:
    """How fast a rollout asks the policy to go: a constant speed, or a schedule from the
    gripper-cube distance: `slow` near contact (within `near` metres of a cube that still
    rests on the table: approach, grasp, lift-off), else `fast` (transit, the carry included).
    `scale_actions`: the policy runs at 1x and its motion is multiplied by the speed (the
    baseline without VSTA)."""

    speed: float = 1.0
    fast: float = 0.0  # > 0: scheduled
    slow: float = 0.0
    near: float = 0.06
    scale_actions: bool = False

    def speeds(self, obs: torch.Tensor) -> torch.Tensor:
        if self.fast > 0:
            contact = (obs[:, BOX_TO_GRIPPER].norm(dim=-1) < self.near) & (obs[:, BOX_HEIGHT] < RESTING_HEIGHT)
            return torch.where(contact, torch.tensor(self.slow), torch.tensor(self.fast))
        return torch.full((len(obs),), float(self.speed))


class SpeedActor(nn.Module):
    """A trained SpeedPolicy behind the rollout workers' `act(obs, deterministic)` (actions
    (n, motion_dim + 1): motion clipped to the action bound, gripper +1 open / -1 closed;
    log-probs zero: the policy is deterministic). With action chunking it predicts a chunk for
    every environment at once and plays `execute` of its actions before predicting again (the
    environments of one evaluation start together, so one clock serves them all)."""

    def __init__(self, policy: SpeedPolicy, command: SpeedCommand, execute: int = 0, inputs: str = "state"):
        super().__init__()
        self.policy, self.command, self.inputs = policy, command, inputs
        self.execute = execute or policy.chunk
        self.plan, self.played = None, 0

    @torch.no_grad()
    def predict(self, obs: torch.Tensor) -> torch.Tensor:
        """(n, chunk, motion_dim + 1): the policy's next chunk of environment actions."""
        speed = self.command.speeds(obs)
        asked = torch.ones_like(speed) if self.command.scale_actions else speed
        image = None
        if self.inputs == "image":  # the observation ends with the camera frame (PandaPickCube's image_size)
            size = self.policy.image_size
            image = obs[:, -3 * size * size:].reshape(len(obs), size, size, 3)
        motion, logit = self.policy(policy_state(obs, self.inputs), asked, image=image)
        if self.command.scale_actions:
            motion = motion * speed[:, None, None]
        return torch.cat([motion.clamp(-1.0, 1.0), torch.where(logit > 0, 1.0, -1.0)[..., None]], dim=-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if self.plan is None or self.played >= self.execute or len(self.plan) != len(obs):
            self.plan, self.played = self.predict(obs), 0
        actions = self.plan[:, self.played]
        self.played += 1
        return actions, torch.zeros(len(obs))


@dataclasses.dataclass
class SpeedActorSpec:
    """What a rollout worker builds (`build()`), then loads the policy's weights into."""

    state_dim: int
    hidden: list[int]
    conditioning: str
    command: SpeedCommand
    motion_dim: int = 3
    chunk: int = 1
    execute: int = 0
    inputs: str = "state"
    image_size: int = 0

    def build(self) -> SpeedActor:
        policy = SpeedPolicy(self.state_dim, self.hidden, self.conditioning, motion_dim=self.motion_dim, chunk=self.chunk,
                             image_size=self.image_size)
        return SpeedActor(policy, self.command, self.execute, self.inputs)


def episode_steps_at(speed: float, steps_at_1x: int) -> int:
    """The time limit of an episode at `speed`: the 1x limit scaled by 1/c."""
    return math.ceil(steps_at_1x / speed)


# --- the policy artifact -----------------------------------------------------------------------------

ARTIFACT_KIND = "rayworks.tempovla.speed_policy"
OBSERVATION_BASE_DIM = 34  # PandaPickCube's observation before the last action


def policy_specs(state_dim: int, policy: PolicyConfig, speeds: list[float], augment: str, action_type: str = "ee_delta",
                 image_size: int = 0) -> dict:
    """The specs `policy.pt` holds besides the weights (`workloads.policies`; the state normaliser
    is among the weights, as buffers): what a server needs to run the policy without the config."""
    from workloads.tempovla.demos import ACTION_TYPES

    mode, names = ACTION_TYPES[action_type]
    speed_range = [min(speeds), max(speeds)]
    return {"state_dim": state_dim, "hidden": list(policy.hidden), "conditioning": policy.conditioning, "chunk": policy.chunk,
            "execute": policy.execute or policy.chunk, "speed_range": speed_range, "augment": augment,
            "action_type": action_type, "action_mode": mode, "inputs": policy.inputs, "image_size": image_size,
            "observation_dim": OBSERVATION_BASE_DIM + len(names) + 3 * image_size**2, "action_names": names,
            "action_dim": len(names),
            "command": {"speed": {"range": speed_range}, "schedule": {"fields": ["fast", "slow", "near"], "range": speed_range}}}


def save_policy_artifact(path, weights: dict, specs: dict):
    """`policy.pt` at `path` (a file or its directory) in the shared format."""
    from workloads.policies import save_policy

    return save_policy(path, ARTIFACT_KIND, weights, specs)


def act_on_command(policy: SpeedPolicy, specs: dict, obs: torch.Tensor, command: dict) -> dict:
    """The policy on a served command: {"speed": c} or {"schedule": {"fast", "slow", "near"}},
    each speed within the trained range -> {"actions", "speeds"} (+ "chunk", each row's whole
    predicted chunk, for a policy trained with chunks). A policy trained without VSTA has its
    motion scaled by the speed, as in evaluation."""
    from workloads.policies import CommandError

    low, high = specs["speed_range"]
    speed, schedule = command.get("speed"), command.get("schedule")
    if (speed is None) == (schedule is None):
        raise CommandError(["command: give either speed or schedule"])
    problems = []
    if schedule is not None:
        if not isinstance(schedule, dict) or not {"fast", "slow"} <= set(schedule) or set(schedule) - {"fast", "slow", "near"}:
            raise CommandError(["command.schedule: expected {\"fast\": c, \"slow\": c, \"near\": metres (optional)}"])
        commanded = [("command.schedule.fast", schedule["fast"]), ("command.schedule.slow", schedule["slow"])]
    else:
        commanded = [("command.speed", speed)]
    for name, value in commanded:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            problems.append(f"{name}: {value!r} is outside the trained range [{low}, {high}]")
    near = schedule.get("near", 0.05) if schedule else 0.05
    if isinstance(near, bool) or not isinstance(near, (int, float)) or not 0 < near <= 1:
        problems.append(f"command.schedule.near: {near!r} is not a distance in (0, 1] metres")
    if problems:
        raise CommandError(problems)
    scale = specs["augment"] == "none"
    speed_command = (SpeedCommand(speed=float(speed), scale_actions=scale) if speed is not None else
                     SpeedCommand(fast=float(schedule["fast"]), slow=float(schedule["slow"]), near=float(near), scale_actions=scale))
    chunk = SpeedActor(policy, speed_command, inputs=specs.get("inputs", "state")).predict(obs)
    reply = {"actions": chunk[:, 0], "speeds": speed_command.speeds(obs)}
    if specs.get("chunk", 1) > 1:  # action chunking: the whole predicted chunk too, to be played in order
        reply["chunk"] = chunk
    return reply


def load_policy_artifact(path) -> tuple[SpeedPolicy, dict]:
    """A saved `policy.pt` (or the directory holding it) -> (the policy, its specs); a clear
    error for a file that is not one, or not a TempoVLA policy."""
    from workloads.policies import load_policy

    return load_policy(path, ARTIFACT_KIND)
