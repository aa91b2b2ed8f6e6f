"""The one policy artifact format (`workloads.policies`): each kind saved by its pipeline's own
code loads back to a policy that acts exactly as the one saved, and a file that is not a policy,
or whose specs do not fit its weights, is refused naming the file and what is wrong."""

from pathlib import Path

import numpy as np
import pytest
import torch

from workloads.policies import PolicyArtifactError, load_policy, read_policy, save_policy


def trained_looking(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights and normaliser statistics away from their initial values, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator)).abs_()
    return module


def test_a_ppo_specialist_round_trips_with_its_normaliser(tmp_path: Path):
    from pipelines import ppo

    config = ppo.Config()
    spec = ppo.policy_spec(config)
    policy = trained_looking(ppo.build_policy(config, spec), seed=1)
    path = save_policy(tmp_path, ppo.POLICY_KIND, policy.state_dict(), ppo.policy_specs(config, spec))
    assert path == tmp_path / "policy.pt"
    loaded, specs = load_policy(tmp_path, ppo.POLICY_KIND)
    assert specs["observation_dim"] == spec.obs_dim and specs["action_dim"] == spec.action_dim
    assert specs["env"] == "rayworks/PandaReach-v0" and specs["action_mode"] == "joint" and specs["command"] == {}
    obs = torch.randn(5, spec.obs_dim) * 3
    assert torch.equal(loaded.act(obs, deterministic=True)[0], policy.act(obs, deterministic=True)[0])
    assert torch.equal(loaded.obs_norm.mean, policy.obs_norm.mean)  # the normaliser travels with the weights


def test_a_tempovla_policy_round_trips(tmp_path: Path):
    from workloads.tempovla.policy import (
        ARTIFACT_KIND,
        PolicyConfig,
        SpeedPolicy,
        load_policy_artifact,
        policy_specs,
        save_policy_artifact,
    )

    policy = trained_looking(SpeedPolicy(25, [32, 32], "film", np.linspace(-1, 1, 25), np.linspace(0.5, 2, 25)), seed=2)
    save_policy_artifact(tmp_path, policy.state_dict(), policy_specs(25, PolicyConfig(hidden=[32, 32]), [0.5, 2.0], "vsta"))
    loaded, specs = load_policy_artifact(tmp_path)
    assert read_policy(tmp_path)["kind"] == ARTIFACT_KIND and specs["command"]["speed"] == {"range": [0.5, 2.0]}
    state, speed = torch.randn(4, 25), torch.full((4,), 1.5)
    assert all(torch.equal(a, b) for a, b in zip(loaded(state, speed), policy(state, speed)))
    with pytest.raises(PolicyArtifactError, match="a rayworks.tempovla.speed_policy policy, not a rayworks.ppo.actor_critic one"):
        load_policy(tmp_path, "rayworks.ppo.actor_critic")


def test_what_is_not_a_policy_is_named(tmp_path: Path):
    from pipelines import ppo

    with pytest.raises(PolicyArtifactError, match=r"nowhere: no policy artifact \(policy.pt\) there"):
        load_policy(tmp_path / "nowhere")
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    with pytest.raises(PolicyArtifactError, match="junk.pt: not a policy artifact"):
        load_policy(tmp_path / "junk.pt")
    config = ppo.Config()
    spec = ppo.policy_spec(config)
    weights = ppo.build_policy(config, spec).state_dict()
    specs = ppo.policy_specs(config, spec)
    with pytest.raises(PolicyArtifactError, match="unknown policy kind 'mystery'; known: rayworks.ppo.actor_critic"):
        save_policy(tmp_path / "a.pt", "mystery", weights, specs)
    with pytest.raises(PolicyArtifactError, match="the specs lack command"):
        save_policy(tmp_path / "a.pt", ppo.POLICY_KIND, weights, {k: v for k, v in specs.items() if k != "command"})
    # specs that claim another observation size than the weights have
    save_policy(tmp_path / "wrong.pt", ppo.POLICY_KIND, weights, dict(specs, observation_dim=spec.obs_dim + 3))
    with pytest.raises(PolicyArtifactError, match="wrong.pt: the weights do not fit the specs"):
        load_policy(tmp_path / "wrong.pt")
