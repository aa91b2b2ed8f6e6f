"""One artifact format for every trained controller: a `policy.pt` holding its kind, its weights
(observation normalisers included, as buffers) and the specs a rollout worker or a server needs
to run it without the pipeline's config.

    {"kind": "rayworks.ppo.actor_critic", "state_dict": {...},
     "observation_dim": 20, "action_dim": 4, "action_mode": "ee", "command": {}, ...kind's own build settings}

Every kind declares `observation_dim`, `action_dim`, `action_mode` (what the environment steps
with) and `command` (the fields a caller sets besides the observation, each with its range:
`{"speed": {"range": [0.5, 2.0]}}`; `{}` for a policy whose task lives in its observation).
`KINDS` maps a kind to how to build its module from the specs and how to act on a command
(`PolicyKind`); `load_policy` reads any of them, `act` runs any of them on a batch of
observations and a command (what the `policy` Serve app answers with). Written here rather than as MLflow pyfunc models: a rollout worker needs the torch
module itself (its `act`), not a predict function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch

POLICY_FILE = "policy.pt"
COMMON_SPECS = ("observation_dim", "action_dim", "action_mode", "command")


class PolicyArtifactError(ValueError):
    """A file that is not a policy artifact, or one whose specs do not fit; the message names it."""


class CommandError(ValueError):
    """A command or observation a policy cannot take; `problems` are "<field>: <what is wrong>"."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def build_ppo_actor_critic(specs: dict) -> torch.nn.Module:
    from workloads.ppo import ActorCritic

    return ActorCritic(specs["observation_dim"], specs["critic_dim"], specs["action_dim"], tuple(specs["hidden"]))


def act_ppo_actor_critic(policy, specs: dict, observations: torch.Tensor, command: dict) -> dict:
    return {"actions": policy.act(observations, deterministic=True)[0]}  # the Gaussian's mean


def gaussian_ppo_actor_critic(policy, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    distribution = policy.distribution(observations)
    return distribution.mean, distribution.scale.log()


def build_handoff_student(specs: dict) -> torch.nn.Module:
    from workloads.handoff.student import build_student

    return build_student(specs)


def act_handoff_student(policy, specs: dict, observations: torch.Tensor, command: dict) -> dict:
    """The student's command lives in its observation's command block: fields given here
    overwrite that part of every row (`mode` by name, the others as numbers)."""
    observations = observations.clone()
    layout, problems = specs["command_layout"], []
    for name, value in command.items():
        start, stop = layout[name]
        if name == "mode":
            if value not in specs["modes"]:
                problems.append(f"command.mode: expected one of {specs['modes']}, got {value!r}")
                continue
            row = [0.0] * len(specs["modes"])
            row[specs["modes"].index(value)] = 1.0
        else:
            row = value if isinstance(value, list) else [value]
            if len(row) != stop - start or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in row):
                problems.append(f"command.{name}: expected {stop - start} finite numbers, got {value!r}")
                continue
        observations[:, start:stop] = torch.tensor(row, dtype=observations.dtype)
    if problems:
        raise CommandError(problems)
    out = {"actions": policy.act(observations, deterministic=True)[0]}
    if hasattr(policy, "gate_weights"):
        out["gate"] = policy.gate_weights(observations)
    return out


def gaussian_handoff_student(policy, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gaussian = policy.gaussian(observations)
    return gaussian.mean, gaussian.log_std


def build_tempovla_speed_policy(specs: dict) -> torch.nn.Module:
    from workloads.tempovla.policy import SpeedPolicy

    return SpeedPolicy(specs["state_dim"], specs["hidden"], specs["conditioning"], motion_dim=specs["action_dim"] - 1,
                       chunk=specs.get("chunk", 1), image_size=specs.get("image_size", 0))


def act_tempovla_speed_policy(policy, specs: dict, observations: torch.Tensor, command: dict) -> dict:
    from workloads.tempovla.policy import act_on_command

    return act_on_command(policy, specs, observations, command)


@dataclasses.dataclass(frozen=True)
class PolicyKind:
    build: Callable[[dict], torch.nn.Module]  # specs -> the module, weights not yet loaded
    # (policy, specs, observations (n, observation_dim), command) -> {"actions": (n, action_dim), ...};
    # raises CommandError naming the command field it cannot take
    act: Callable[[torch.nn.Module, dict, torch.Tensor, dict], dict]
    # (policy, observations) -> (mean, log_std) of its diagonal Gaussian over actions, for kinds
    # that have one: what an expert-query actor labels states with
    gaussian: Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


KINDS: dict[str, PolicyKind] = {
    "rayworks.ppo.actor_critic": PolicyKind(build_ppo_actor_critic, act_ppo_actor_critic, gaussian_ppo_actor_critic),
    "rayworks.handoff.student": PolicyKind(build_handoff_student, act_handoff_student, gaussian_handoff_student),
    "rayworks.tempovla.speed_policy": PolicyKind(build_tempovla_speed_policy, act_tempovla_speed_policy),
}


def save_policy(path: str | Path, kind: str, state_dict: dict, specs: dict) -> Path:
    """Write `policy.pt` (at `path`, or inside it when it is a directory); the specs are checked first."""
    check_specs(kind, specs, "the policy being saved")
    path = Path(path)
    path = path / POLICY_FILE if path.is_dir() else path
    torch.save({"kind": kind, "state_dict": state_dict, **specs}, path)
    return path


def check_specs(kind: str, specs: dict, where: str) -> None:
    if kind not in KINDS:
        raise PolicyArtifactError(f"{where}: unknown policy kind {kind!r}; known: {', '.join(KINDS)}")
    missing = [name for name in COMMON_SPECS if name not in specs]
    if missing:
        raise PolicyArtifactError(f"{where}: the specs lack {', '.join(missing)}")
    if not isinstance(specs["command"], dict):
        raise PolicyArtifactError(f"{where}: command must map each field to its schema, got {type(specs['command']).__name__}")


def read_policy(path: str | Path) -> dict:
    """The saved dictionary of a `policy.pt` (or the directory holding it), checked."""
    path = Path(path)
    path = path / POLICY_FILE if path.is_dir() else path
    if not path.is_file():
        raise PolicyArtifactError(f"{path}: no policy artifact ({POLICY_FILE}) there")
    try:
        saved = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # not a torch file at all
        raise PolicyArtifactError(f"{path}: not a policy artifact ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise PolicyArtifactError(f"{path}: not a policy artifact (no kind and weights in it)")
    check_specs(saved.get("kind"), saved, str(path))
    return saved


def load_policy(path: str | Path, kind: str | None = None) -> tuple[torch.nn.Module, dict]:
    """(the policy in eval mode, its specs) from a `policy.pt` or its directory; `kind` given:
    refuse any other kind, naming both."""
    saved = read_policy(path)
    if kind is not None and saved["kind"] != kind:
        raise PolicyArtifactError(f"{path}: a {saved['kind']} policy, not a {kind} one")
    policy = KINDS[saved["kind"]].build(saved)
    try:
        policy.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:  # weights that do not fit the declared shapes
        raise PolicyArtifactError(f"{path}: the weights do not fit the specs ({str(exc)[:300]})") from None
    return policy.eval(), {k: v for k, v in saved.items() if k != "state_dict"}


@torch.no_grad()
def act(policy: torch.nn.Module, specs: dict, observations, command: dict | None = None) -> dict:
    """Any loaded policy on a batch of observations (rows of `observation_dim` numbers) and a
    command: {"actions": (n, action_dim), ...whatever else the kind reports}. Rows of the wrong
    width and command fields the policy does not declare raise CommandError naming them."""
    command = dict(command or {})
    width = specs["observation_dim"]
    problems = [f"observation[{i}]: expected {width} numbers, got {len(row)}" for i, row in enumerate(observations)
                if len(row) != width][:5]
    problems += [f"command.{name}: not a command of this policy ({', '.join(specs['command']) or 'it takes none'})"
                 for name in command if name not in specs["command"]]
    if problems:
        raise CommandError(problems)
    return KINDS[specs["kind"]].act(policy, specs, torch.as_tensor(observations, dtype=torch.float32), command)


@torch.no_grad()
def gaussian(policy: torch.nn.Module, specs: dict, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log_std) of a Gaussian policy's action distribution at each observation row."""
    kind = KINDS[specs["kind"]]
    if kind.gaussian is None:
        raise PolicyArtifactError(f"a {specs['kind']} policy has no Gaussian action distribution to label states with")
    return kind.gaussian(policy, observations)
