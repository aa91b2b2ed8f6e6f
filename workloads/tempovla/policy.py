"""TempoVLA's speed-conditioned policy for PandaPickCube in end-effector mode.

The policy maps (state, speed c) to an end-effector delta (units of the env's `ee_step`) and a
gripper logit. The speed enters by feature modulation (FiLM: each hidden layer is scaled and
shifted by a function of c, initialised to the identity) or as a speed token (features of c
concatenated to the state), as `conditioning` says.

The state is the speed-invariant part of the observation: positions only. Joint velocities and
the previous action scale with the speed, so a policy that read them would see, at 2x, states
that no 1x demonstration contains (the paper's policies read images, which carry no velocity).

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
BOX_TO_GRIPPER = slice(24, 27)  # within the observation
BOX_HEIGHT = 23  # the cube's z
RESTING_HEIGHT = 0.03 + 0.02  # the cube's centre on the table (half its height) plus a margin: below this it is not lifted
CONDITIONINGS = ("film", "token")


def policy_state(obs):
    """The speed-invariant columns of PandaPickCube observations (numpy or torch, (..., obs_dim))."""
    return obs[..., STATE_INDEX]


def speed_features(speed: torch.Tensor) -> torch.Tensor:
    """(n,) speeds -> (n, 3): log c carries ratios evenly (0.5x and 2x are symmetric about 1x)."""
    log = torch.log(speed)
    return torch.stack([log, log**2, speed - 1.0], dim=-1)


@dataclasses.dataclass
class PolicyConfig:
    """The speed-conditioned policy's shape."""

    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256])  # MLP layer sizes
    conditioning: str = "film"  # film (feature modulation) or token (speed features as input)


class SpeedPolicy(nn.Module):
    """(state, speed) -> (motion (n, 3), gripper logit (n,)); states normalised by the dataset's statistics."""

    def __init__(self, state_dim: int, hidden: list[int], conditioning: str = "film",
                 state_mean: np.ndarray | None = None, state_std: np.ndarray | None = None):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}")
        self.conditioning = conditioning
        mean = torch.zeros(state_dim) if state_mean is None else torch.as_tensor(state_mean, dtype=torch.float32)
        std = torch.ones(state_dim) if state_std is None else torch.as_tensor(state_std, dtype=torch.float32)
        self.register_buffer("state_mean", mean)
        self.register_buffer("state_std", std.clamp_min(1e-3))
        extra = 3 if conditioning == "token" else 0
        sizes = [state_dim + extra, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        if conditioning == "film":
            self.film = nn.Linear(3, 2 * sum(hidden))
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)  # scale 1, shift 0: FiLM starts as the identity
        self.head = nn.Linear(hidden[-1], 4)

    def forward(self, state: torch.Tensor, speed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (state - self.state_mean) / self.state_std
        features = speed_features(speed)
        if self.conditioning == "token":
            x = torch.cat([x, features], dim=-1)
            for layer in self.layers:
                x = F.gelu(layer(x))
        else:
            modulation = self.film(features).split([size for layer in self.layers for size in (layer.out_features,) * 2], dim=-1)
            for i, layer in enumerate(self.layers):
                x = F.gelu(layer(x) * (1 + modulation[2 * i]) + modulation[2 * i + 1])
        out = self.head(x)
        return out[:, :3], out[:, 3]


def bc_loss(policy: nn.Module, batch: dict[str, torch.Tensor], gripper_weight: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Behaviour cloning: squared error of the motion plus the gripper command's cross-entropy
    (open = +1 is the positive class)."""
    motion, logit = policy(batch["state"], batch["speed"])
    motion_loss = F.mse_loss(motion, batch["motion"])
    gripper_loss = F.binary_cross_entropy_with_logits(logit, (batch["gripper"] > 0).float())
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
    (n, 4): motion clipped to the action bound, gripper +1 open / -1 closed; log-probs zero: the
    policy is deterministic)."""

    def __init__(self, policy: SpeedPolicy, command: SpeedCommand):
        super().__init__()
        self.policy, self.command = policy, command

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        speed = self.command.speeds(obs)
        asked = torch.ones_like(speed) if self.command.scale_actions else speed
        motion, logit = self.policy(policy_state(obs), asked)
        if self.command.scale_actions:
            motion = motion * speed[:, None]
        actions = torch.cat([motion.clamp(-1.0, 1.0), torch.where(logit > 0, 1.0, -1.0)[:, None]], dim=-1)
        return actions, torch.zeros(len(obs))


@dataclasses.dataclass
class SpeedActorSpec:
    """What a rollout worker builds (`build()`), then loads the policy's weights into."""

    state_dim: int
    hidden: list[int]
    conditioning: str
    command: SpeedCommand

    def build(self) -> SpeedActor:
        return SpeedActor(SpeedPolicy(self.state_dim, self.hidden, self.conditioning), self.command)


def episode_steps_at(speed: float, steps_at_1x: int) -> int:
    """The time limit of an episode at `speed`: the 1x limit scaled by 1/c."""
    return math.ceil(steps_at_1x / speed)


# --- the policy artifact -----------------------------------------------------------------------------

ARTIFACT_KIND = "rayworks.tempovla.speed_policy"
OBSERVATION_DIM = 38  # PandaPickCube's observation in ee mode
ACTION_NAMES = ["ee_dx", "ee_dy", "ee_dz", "gripper"]


def policy_artifact(weights: dict, state_dim: int, policy: PolicyConfig, speeds: list[float], augment: str) -> dict:
    """What `policy.pt` holds: the weights (the state normaliser among them as buffers) and the
    specs a server needs to run the policy without the pipeline's config."""
    return {"kind": ARTIFACT_KIND, "state_dict": weights, "state_dim": state_dim, "hidden": list(policy.hidden),
            "conditioning": policy.conditioning, "speed_range": [min(speeds), max(speeds)], "augment": augment,
            "observation_dim": OBSERVATION_DIM, "action_names": ACTION_NAMES}


def load_policy_artifact(path) -> tuple[SpeedPolicy, dict]:
    """A saved `policy.pt` (or the directory holding it) -> (the policy, its specs); a clear
    error for a file that is not one."""
    from pathlib import Path

    path = Path(path)
    path = path / "policy.pt" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{path}: no policy artifact (policy.pt) there")
    try:
        saved = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # not a torch file at all
        raise ValueError(f"{path}: not a TempoVLA policy artifact ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(saved, dict) or saved.get("kind") != ARTIFACT_KIND:
        raise ValueError(f"{path}: not a TempoVLA policy artifact (kind {saved.get('kind') if isinstance(saved, dict) else None!r})")
    policy = SpeedPolicy(saved["state_dim"], saved["hidden"], saved["conditioning"])
    policy.load_state_dict(saved["state_dict"])
    return policy.eval(), {k: v for k, v in saved.items() if k != "state_dict"}
