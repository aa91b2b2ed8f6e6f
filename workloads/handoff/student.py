"""HANDOFF's students and their multi-teacher KL DAgger objective, in plain torch.

Both students are diagonal Gaussians over the 29 joint actions with `act(obs, deterministic)`
like PPO's actor-critic, so rollout workers and the `policy` Serve app run them unchanged.

- `MixtureOfExpertsPolicy`: K expert heads, each an MLP on the normalised observation giving a
  mean and a log-std; a gate (a small MLP with a softmax) reads only the context: the command
  block (velocity, hand and waist targets, mode) and the base's gravity vector with a "down" flag
  (gravity's z above `fallen_gravity_z`), so which experts act depends on the task and on
  whether the robot has fallen. Mean and log-std are the gate-weighted sums of the heads'.
- `DensePolicy`: one MLP whose width is chosen so it has about as many parameters as a given
  mixture (`dense_matching`): the ablation that isolates the gate.

The loss is KL(teacher || student) per visited state (`workloads.distill.gaussian_distillation_loss`,
the same core DistIL's objectives live in), the teacher's Gaussian detached.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from workloads.distill import DiagonalGaussian, gaussian_distillation_loss
from workloads.ppo import RunningNormalizer, mlp

LOG_STD_RANGE = (-5.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Context:
    """Where the gate's inputs sit in an observation row: the command block and the gravity vector."""

    command: tuple[int, int]  # [start, stop) of the command block
    gravity: tuple[int, int]  # [start, stop) of the base's gravity vector (3)
    fallen_gravity_z: float = -0.5

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        gravity = obs[..., self.gravity[0]:self.gravity[1]]
        down = (gravity[..., 2:3] > self.fallen_gravity_z).to(obs.dtype)
        return torch.cat([obs[..., self.command[0]:self.command[1]], gravity, down], dim=-1)

    @property
    def dim(self) -> int:
        return self.command[1] - self.command[0] + self.gravity[1] - self.gravity[0] + 1


class GaussianStudent(nn.Module):
    """What both students share: the observation normaliser and `act`."""

    def gaussian(self, obs: torch.Tensor) -> DiagonalGaussian:
        raise NotImplementedError

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions, their log-probabilities summed over action dimensions)."""
        g = self.gaussian(obs)
        noise = torch.zeros_like(g.mean) if deterministic else torch.randn_like(g.mean)
        actions = g.mean + g.log_std.exp() * noise
        return actions, (-0.5 * noise**2 - g.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class MixtureOfExpertsPolicy(GaussianStudent):
    def __init__(self, obs_dim: int, action_dim: int, context: Context, num_experts: int = 4,
                 hidden: tuple[int, ...] = (128, 128), gate_hidden: int = 64):
        super().__init__()
        self.context, self.action_dim = context, action_dim
        self.obs_norm = RunningNormalizer(obs_dim)
        self.experts = nn.ModuleList([mlp([obs_dim, *hidden, 2 * action_dim]) for _ in range(num_experts)])
        self.gate = mlp([context.dim, gate_hidden, num_experts])
        with torch.no_grad():
            for expert in self.experts:  # start near the default pose with a moderate spread
                expert[-1].weight.mul_(0.01)
                expert[-1].bias.zero_()
                expert[-1].bias[action_dim:] = math.log(0.5)

    def gate_weights(self, obs: torch.Tensor) -> torch.Tensor:
        """[N, K]: how much each expert head acts at each state."""
        return torch.softmax(self.gate(self.context.features(obs)), dim=-1)

    def gaussian(self, obs: torch.Tensor) -> DiagonalGaussian:
        x = self.obs_norm(obs)
        heads = torch.stack([expert(x) for expert in self.experts], dim=1)  # [N, K, 2A]
        mixed = (self.gate_weights(obs).unsqueeze(-1) * heads).sum(dim=1)
        mean, log_std = mixed.split(self.action_dim, dim=-1)
        return DiagonalGaussian(mean, log_std.clamp(*LOG_STD_RANGE))


class DensePolicy(GaussianStudent):
    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.action_dim = action_dim
        self.obs_norm = RunningNormalizer(obs_dim)
        self.net = mlp([obs_dim, *hidden, 2 * action_dim])
        with torch.no_grad():
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()
            self.net[-1].bias[action_dim:] = math.log(0.5)

    def gaussian(self, obs: torch.Tensor) -> DiagonalGaussian:
        mean, log_std = self.net(self.obs_norm(obs)).split(self.action_dim, dim=-1)
        return DiagonalGaussian(mean, log_std.clamp(*LOG_STD_RANGE))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def dense_matching(moe: MixtureOfExpertsPolicy, obs_dim: int, action_dim: int, layers: int = 2) -> DensePolicy:
    """The dense student with `layers` equal hidden layers whose parameter count is closest to the mixture's."""
    target = parameter_count(moe)

    def count(width: int) -> int:
        sizes = [obs_dim, *[width] * layers, 2 * action_dim]
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

    width = min(range(8, 4096), key=lambda w: abs(count(w) - target))
    return DensePolicy(obs_dim, action_dim, (width,) * layers)


def distillation_loss(student: GaussianStudent, obs: torch.Tensor, teacher_mean: torch.Tensor,
                      teacher_log_std: torch.Tensor) -> torch.Tensor:
    """Mean over visited states of KL(teacher || student), the teacher's Gaussian fixed."""
    return gaussian_distillation_loss(DiagonalGaussian(teacher_mean, teacher_log_std), student.gaussian(obs))


@dataclasses.dataclass
class MixingSchedule:
    """DAgger's probability that a step executes the teacher's action instead of the student's:
    `start * decay**iteration`, 0 from `stop_after` iterations on (the student then acts alone)."""

    start: float = 0.5  # the probability at the first iteration
    decay: float = 0.8  # its factor per iteration
    stop_after: int = 20  # iterations after which the student acts alone

    def probability(self, iteration: int) -> float:
        return 0.0 if iteration >= self.stop_after else self.start * self.decay**iteration


STUDENTS = ("moe", "dense")


def student_specs(student: str, obs_dim: int, action_dim: int, context: Context, command_layout: dict[str, list[int]],
                  modes: list[str], num_experts: int, hidden: list[int], gate_hidden: int) -> dict:
    """The build settings a `policy.pt` of kind `rayworks.handoff.student` holds (`workloads.policies`):
    the dense student's width is fixed here, matched to the mixture of the same settings."""
    if student not in STUDENTS:
        raise ValueError(f"student: expected one of {STUDENTS}, got {student!r}")
    moe = MixtureOfExpertsPolicy(obs_dim, action_dim, context, num_experts, tuple(hidden), gate_hidden)
    dense = dense_matching(moe, obs_dim, action_dim, len(hidden))
    command = {name: {"shape": [stop - start]} for name, (start, stop) in command_layout.items() if name != "mode"}
    command["mode"] = {"choices": list(modes)}
    return {"observation_dim": obs_dim, "action_dim": action_dim, "action_mode": "joint", "command": command,
            "student": student, "num_experts": num_experts, "hidden": list(hidden), "gate_hidden": gate_hidden,
            "dense_hidden": [dense.net[0].out_features] * len(hidden), "context": dataclasses.asdict(context),
            "command_layout": {k: list(v) for k, v in command_layout.items()}, "modes": list(modes)}


def build_student(specs: dict) -> GaussianStudent:
    if specs["student"] == "moe":
        context = Context(tuple(specs["context"]["command"]), tuple(specs["context"]["gravity"]),
                          specs["context"]["fallen_gravity_z"])
        return MixtureOfExpertsPolicy(specs["observation_dim"], specs["action_dim"], context, specs["num_experts"],
                                      tuple(specs["hidden"]), specs["gate_hidden"])
    return DensePolicy(specs["observation_dim"], specs["action_dim"], tuple(specs["dense_hidden"]))
