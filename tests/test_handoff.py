"""HANDOFF's parts without Ray: the gate reads only the context, the mixture is the gate-weighted
sum of its heads, the dense ablation's size, the KL loss against a closed form, the mixing
schedule, the workspace measure, the student as a policy artifact, and teachers that do not fit
refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from envs.g1 import OBSERVATION_DIM, OBSERVATION_SLICES
from pipelines import handoff
from workloads.config import ConfigError
from workloads.handoff.metrics import reachable_workspace
from workloads.handoff.student import (Context, DensePolicy, MixingSchedule, MixtureOfExpertsPolicy, dense_matching,
                                       distillation_loss, parameter_count)
from workloads.policies import CommandError, act, load_policy, save_policy

CONTEXT = Context((OBSERVATION_SLICES["command"].start, OBSERVATION_SLICES["command"].stop),
                  (OBSERVATION_SLICES["gravity"].start, OBSERVATION_SLICES["gravity"].stop))
MODE = slice(OBSERVATION_DIM - 3, OBSERVATION_DIM)


def moe(seed: int = 0) -> MixtureOfExpertsPolicy:
    torch.manual_seed(seed)
    policy = MixtureOfExpertsPolicy(OBSERVATION_DIM, 29, CONTEXT, num_experts=3, hidden=(32, 32), gate_hidden=16)
    with torch.no_grad():  # heads and gate away from their small initialisation, so they differ
        for parameter in policy.parameters():
            parameter.normal_(std=0.3)
    return policy


def test_the_gate_reads_the_command_and_whether_the_robot_is_down_and_nothing_else():
    policy, obs = moe(), torch.randn(4, OBSERVATION_DIM)
    obs[:, OBSERVATION_SLICES["gravity"]] = torch.tensor([0.0, 0.0, -1.0])  # upright
    weights = policy.gate_weights(obs)
    proprioception = obs.clone()
    proprioception[:, OBSERVATION_SLICES["joint_pos"]] += 1.0
    torch.testing.assert_close(policy.gate_weights(proprioception), weights)
    other_mode = obs.clone()
    other_mode[:, MODE] = torch.tensor([0.0, 1.0, 0.0])
    assert not torch.allclose(policy.gate_weights(other_mode), weights)
    fallen = obs.clone()
    fallen[:, OBSERVATION_SLICES["gravity"]] = torch.tensor([-1.0, 0.0, 0.0])  # lying on its side
    assert not torch.allclose(policy.gate_weights(fallen), weights)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))


def test_the_mixture_is_the_gate_weighted_sum_of_its_heads():
    policy, obs = moe(1), torch.randn(5, OBSERVATION_DIM)
    heads = [expert(policy.obs_norm(obs)) for expert in policy.experts]
    weights = torch.softmax(policy.gate(CONTEXT.features(obs)), -1)
    expected = sum(weights[:, k:k + 1] * heads[k] for k in range(3))
    gaussian = policy.gaussian(obs)
    torch.testing.assert_close(gaussian.mean, expected[:, :29])
    torch.testing.assert_close(gaussian.log_std, expected[:, 29:].clamp(-5.0, 1.0))


def test_the_dense_ablation_has_the_mixtures_parameter_count():
    mixture = MixtureOfExpertsPolicy(OBSERVATION_DIM, 29, CONTEXT, num_experts=4)
    dense = dense_matching(mixture, OBSERVATION_DIM, 29)
    assert abs(parameter_count(dense) - parameter_count(mixture)) / parameter_count(mixture) < 0.01


def test_the_loss_is_kl_teacher_to_student_in_closed_form():
    student, obs = DensePolicy(OBSERVATION_DIM, 29, (16,)), torch.randn(6, OBSERVATION_DIM)
    teacher_mean, teacher_log_std = torch.randn(6, 29), torch.randn(6, 29) * 0.3 - 1.0
    mine = student.gaussian(obs)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(teacher_mean, teacher_log_std.exp()),
                                                 torch.distributions.Normal(mine.mean, mine.log_std.exp())).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(student, obs, teacher_mean, teacher_log_std), expected)
    # zero exactly where the student is the teacher
    torch.testing.assert_close(distillation_loss(student, obs, mine.mean.detach(), mine.log_std.detach()), torch.tensor(0.0))


def test_the_mixing_probability_decays_then_stops():
    schedule = MixingSchedule(start=0.5, decay=0.5, stop_after=3)
    assert [schedule.probability(i) for i in range(5)] == [0.5, 0.25, 0.125, 0.0, 0.0]


def test_reachable_workspace_counts_voxels_reached_within_tolerance():
    palms = np.array([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.31, 0.0, 0.0], [0.6, 0.0, 0.0]])
    errors = np.array([0.0, 0.05, 0.05, 0.5])  # the last one passed there far from its target
    assert reachable_workspace(palms, errors) == pytest.approx(2 * 0.05**3)
    assert reachable_workspace(palms, np.ones(4)) == 0.0


def test_the_student_is_a_policy_artifact_that_takes_its_command(tmp_path: Path):
    config = handoff.Config(num_experts=3, hidden=[32, 32], gate_hidden=16)
    specs = handoff.make_student_specs(config)
    student = moe(2)
    with torch.no_grad():
        student.obs_norm.mean.normal_()
    save_policy(tmp_path, handoff.STUDENT_KIND, student.state_dict(), specs)
    loaded, loaded_specs = load_policy(tmp_path)
    obs = torch.randn(3, OBSERVATION_DIM)
    reply = act(loaded, loaded_specs, obs.tolist(), {"mode": "recovery", "velocity": [0.5, 0.0, 0.0]})
    commanded = obs.clone()
    commanded[:, MODE] = torch.tensor([0.0, 1.0, 0.0])
    commanded[:, OBSERVATION_SLICES["command"].start:OBSERVATION_SLICES["command"].start + 3] = torch.tensor([0.5, 0.0, 0.0])
    torch.testing.assert_close(reply["actions"], student.act(commanded, deterministic=True)[0])
    torch.testing.assert_close(reply["gate"], student.gate_weights(commanded))
    assert set(loaded_specs["command"]) == {"velocity", "left_hand", "right_hand", "torso", "mode"}
    with pytest.raises(CommandError, match=r"command.mode: expected one of"):
        act(loaded, loaded_specs, obs.tolist(), {"mode": "dance"})
    with pytest.raises(CommandError, match=r"command.velocity: expected 3 finite numbers"):
        act(loaded, loaded_specs, obs.tolist(), {"velocity": [1.0]})


def test_teachers_that_do_not_fit_are_refused_by_name(tmp_path: Path):
    from workloads.ppo import ActorCritic

    small = ActorCritic(20, 30, 4, (8,))
    save_policy(tmp_path, "rayworks.ppo.actor_critic", small.state_dict(),
                {"observation_dim": 20, "critic_dim": 30, "action_dim": 4, "hidden": [8], "action_mode": "joint", "command": {}})
    with pytest.raises(ConfigError, match=r"teachers.motion: .* acts on 20 observations and 4 actions; the motion task has 115 and 29"):
        handoff.check_teachers(handoff.Config(modes=["motion"], teachers={"motion": str(tmp_path / "policy.pt")}))
    with pytest.raises(ConfigError, match=r"teachers.recovery: .*absent does not exist"):
        handoff.check_teachers(handoff.Config(modes=["recovery"], teachers={"recovery": str(tmp_path / "absent")}))
    with pytest.raises(ConfigError, match=r"teachers: a teacher for 'motion', which is not one of the modes"):
        handoff.Config(modes=["velocity"], teachers={"motion": "x"}).validate()
    with pytest.raises(ConfigError, match=r"modes: unknown task 'dance'"):
        handoff.Config(modes=["velocity", "dance"]).validate()


def test_the_committed_teachers_fit_their_tasks():
    teachers = handoff.check_teachers(handoff.Config())
    assert set(teachers) == {"velocity", "recovery", "motion"}
    for mode, path in teachers.items():
        _, specs = load_policy(path)
        assert specs["env"].endswith({"velocity": "G1Velocity-v0", "recovery": "G1Recovery-v0", "motion": "G1Motion-v0"}[mode])
