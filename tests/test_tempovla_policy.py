"""TempoVLA's policy pieces, exactly: the behaviour-cloning loss against a hand computation, FiLM
starting as the identity (speed has no effect until trained), the schedule's contact rule,
and the 1x baseline's speed imposed by scaling its motion."""

import numpy as np
import pytest
import torch

from workloads.tempovla.policy import (
    BOX_HEIGHT,
    BOX_TO_GRIPPER,
    SpeedActor,
    SpeedCommand,
    SpeedPolicy,
    bc_loss,
    episode_steps_at,
)


class Fixed(torch.nn.Module):
    """A 'policy' that returns given outputs, to check the loss's arithmetic."""

    def __init__(self, motion, logit):
        super().__init__()
        self.motion, self.logit = motion, logit

    def forward(self, state, speed):
        return self.motion, self.logit


def test_bc_loss_is_motion_mse_plus_weighted_gripper_cross_entropy():
    motion = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    logit = torch.tensor([2.0, -1.0])
    batch = {"state": torch.zeros(2, 5), "speed": torch.ones(2), "motion": torch.tensor([[0.1, 0.0, 0.3], [0.5, 0.0, 0.0]]),
             "gripper": torch.tensor([1.0, 1.0])}
    loss, stats = bc_loss(Fixed(motion, logit), batch, gripper_weight=0.1)
    mse = (0.2**2 + 0.5**2) / 6
    bce = (np.log(1 + np.exp(-2.0)) + np.log(1 + np.exp(1.0))) / 2  # both targets open (+1)
    assert stats["motion_mse"] == pytest.approx(mse, rel=1e-6) and stats["gripper_bce"] == pytest.approx(bce, rel=1e-6)
    assert float(loss) == pytest.approx(mse + 0.1 * bce, rel=1e-6)


@pytest.mark.parametrize("conditioning", ["film", "token"])
def test_film_starts_as_the_identity_and_both_conditionings_read_the_speed(conditioning):
    torch.manual_seed(0)
    policy = SpeedPolicy(5, [16, 16], conditioning)
    state = torch.randn(4, 5)
    slow, _ = policy(state, torch.full((4,), 0.5))
    fast, _ = policy(state, torch.full((4,), 2.0))
    if conditioning == "film":
        torch.testing.assert_close(slow, fast)  # zero-initialised modulation: scale 1, shift 0
        with torch.no_grad():
            policy.film.weight.normal_()
        slow, _ = policy(state, torch.full((4,), 0.5))
        fast, _ = policy(state, torch.full((4,), 2.0))
    assert not torch.allclose(slow, fast)
    with pytest.raises(ValueError, match="conditioning"):
        SpeedPolicy(5, [16], "prefix")


def observations(box_to_gripper: list[float], box_height: list[float]) -> torch.Tensor:
    obs = torch.zeros(len(box_height), 38)
    obs[:, BOX_TO_GRIPPER] = torch.tensor([[d, 0.0, 0.0] for d in box_to_gripper])
    obs[:, BOX_HEIGHT] = torch.tensor(box_height)
    return obs


def test_the_schedule_is_slow_only_near_a_cube_that_rests_on_the_table():
    command = SpeedCommand(fast=2.0, slow=0.5, near=0.05)
    # far away; near and resting; near but lifted (carried); far and lifted
    speeds = command.speeds(observations([0.3, 0.02, 0.0, 0.2], [0.03, 0.03, 0.2, 0.2]))
    assert speeds.tolist() == [2.0, 0.5, 2.0, 2.0]
    assert SpeedCommand(speed=1.5).speeds(observations([0.0], [0.03])).tolist() == [1.5]
    assert episode_steps_at(0.5, 400) == 800 and episode_steps_at(1.5, 400) == 267


def test_the_baseline_runs_the_policy_at_1x_and_scales_its_motion():
    torch.manual_seed(1)
    policy = SpeedPolicy(25, [16], "token")
    obs = observations([0.3, 0.3], [0.03, 0.03]) + 0.1 * torch.randn(2, 38)
    one, _ = SpeedActor(policy, SpeedCommand(speed=1.0)).act(obs)
    scaled, log_probs = SpeedActor(policy, SpeedCommand(speed=1.5, scale_actions=True)).act(obs)
    torch.testing.assert_close(scaled[:, :3], (1.5 * one[:, :3]).clamp(-1, 1))
    assert torch.equal(scaled[:, 3], one[:, 3]) and set(one[:, 3].tolist()) <= {-1.0, 1.0} and not log_probs.any()


def test_the_policy_state_is_the_observations_positions():
    from envs.panda import BOX_QPOS, PandaPickCube
    from workloads.tempovla.policy import policy_state

    task = PandaPickCube(2, seed=4, action_mode="ee")
    task.step(np.full((2, 4), 0.3, dtype=np.float32))  # moving: velocities and the last action are non-zero
    q = task.sim.qpos
    expected = np.concatenate([q[:, :9], task.gripper, task.box, task.box - task.gripper, task.target - task.box,
                               q[:, BOX_QPOS.start + 3 : BOX_QPOS.stop]], axis=1)
    np.testing.assert_allclose(policy_state(task.observe()), expected, rtol=1e-6, atol=1e-6)
    obs = torch.from_numpy(task.observe())
    np.testing.assert_allclose(obs[:, BOX_TO_GRIPPER].numpy(), task.box - task.gripper, atol=1e-6)
    np.testing.assert_allclose(obs[:, BOX_HEIGHT].numpy(), task.box[:, 2], atol=1e-6)
