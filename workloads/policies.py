"""One artifact format for every trained controller: a `policy.pt` holding its kind, its weights
(observation normalisers included, as buffers) and the specs a rollout worker or a server needs
to run it without the pipeline's config.

    {"kind": "rayworks.ppo.actor_critic", "state_dict": {...},
     "observation_dim": 20, "action_dim": 4, "action_mode": "ee", "command": {}, ...kind's own build settings}

Every kind declares `observation_dim`, `action_dim`, `action_mode` (what the environment steps
with) and `command` (the fields a caller sets besides the observation, each with its range:
`{"speed": {"range": [0.5, 2.0]}}`; `{}` for a policy whose task lives in its observation).
`KINDS` maps a kind to the function that builds its module from the specs; `load_policy` reads
any of them. Written here rather than as MLflow pyfunc models: a rollout worker needs the torch
module itself (its `act`), not a predict function.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

POLICY_FILE = "policy.pt"
COMMON_SPECS = ("observation_dim", "action_dim", "action_mode", "command")


class PolicyArtifactError(ValueError):
    """A file that is not a policy artifact, or one whose specs do not fit; the message names it."""


def build_ppo_actor_critic(specs: dict) -> torch.nn.Module:
    from workloads.ppo import ActorCritic

    return ActorCritic(specs["observation_dim"], specs["critic_dim"], specs["action_dim"], tuple(specs["hidden"]))


def build_tempovla_speed_policy(specs: dict) -> torch.nn.Module:
    from workloads.tempovla.policy import SpeedPolicy

    return SpeedPolicy(specs["state_dim"], specs["hidden"], specs["conditioning"], motion_dim=specs["action_dim"] - 1,
                       chunk=specs.get("chunk", 1), image_size=specs.get("image_size", 0))


KINDS: dict[str, Callable[[dict], torch.nn.Module]] = {
    "rayworks.ppo.actor_critic": build_ppo_actor_critic,
    "rayworks.tempovla.speed_policy": build_tempovla_speed_policy,
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
    policy = KINDS[saved["kind"]](saved)
    try:
        policy.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:  # weights that do not fit the declared shapes
        raise PolicyArtifactError(f"{path}: the weights do not fit the specs ({str(exc)[:300]})") from None
    return policy.eval(), {k: v for k, v in saved.items() if k != "state_dict"}
