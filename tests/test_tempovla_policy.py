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

    def forward(self, state, speed, image=None):
        return self.motion, self.logit


def test_bc_loss_is_motion_mse_plus_weighted_gripper_cross_entropy():
    motion = torch.tensor([[[0.1, 0.2, 0.3]], [[0.0, 0.0, 0.0]]])  # (n, chunk 1, 3)
    logit = torch.tensor([[2.0], [-1.0]])
    batch = {"state": torch.zeros(2, 5), "speed": torch.ones(2), "motion": torch.tensor([[[0.1, 0.0, 0.3]], [[0.5, 0.0, 0.0]]]),
             "gripper": torch.tensor([[1.0], [1.0]])}
    loss, stats = bc_loss(Fixed(motion, logit), batch, gripper_weight=0.1)
    mse = (0.2**2 + 0.5**2) / 6
    bce = (np.log(1 + np.exp(-2.0)) + np.log(1 + np.exp(1.0))) / 2  # both targets open (+1)
    assert stats["motion_mse"] == pytest.approx(mse, rel=1e-6) and stats["gripper_bce"] == pytest.approx(bce, rel=1e-6)
    assert float(loss) == pytest.approx(mse + 0.1 * bce, rel=1e-6)


def test_bc_loss_over_a_chunk_counts_only_the_steps_that_exist():
    # two examples of chunk 2; the second example's second step runs past its demonstration
    motion = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 1.0], [9.0, 9.0]]])
    logit = torch.zeros(2, 2)
    batch = {"state": torch.zeros(2, 5), "speed": torch.ones(2), "motion": torch.zeros(2, 2, 2),
             "gripper": torch.ones(2, 2), "valid": torch.tensor([[True, True], [True, False]])}
    loss, stats = bc_loss(Fixed(motion, logit), batch, gripper_weight=1.0)
    # per-step mean squared motion error: 0.5, 2.0, 0.5 (the invalid 81.0 left out)
    assert stats["motion_mse"] == pytest.approx((0.5 + 2.0 + 0.5) / 3, rel=1e-6)
    assert stats["gripper_bce"] == pytest.approx(np.log(2.0), rel=1e-6)


def test_a_chunked_actor_plays_execute_actions_of_each_chunk_before_asking_again():
    class Counting(torch.nn.Module):
        """Chunks whose motion says which call and which step of the chunk it is."""

        chunk, motion_dim = 3, 1

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, state, speed, image=None):
            self.calls += 1
            steps = torch.arange(3, dtype=torch.float32)
            motion = (0.1 * self.calls + 0.01 * steps).expand(len(state), 3)[..., None]
            return motion, torch.ones(len(state), 3)

    policy = Counting()
    actor = SpeedActor(policy, SpeedCommand(speed=1.0), execute=2)
    obs = torch.zeros(2, 38)
    played = [round(float(actor.act(obs)[0][0, 0]), 4) for _ in range(5)]
    assert played == [0.1, 0.11, 0.2, 0.21, 0.3] and policy.calls == 3
    whole = SpeedActor(Counting(), SpeedCommand(speed=1.0))  # execute 0: the whole chunk
    assert [round(float(whole.act(obs)[0][0, 0]), 4) for _ in range(4)] == [0.1, 0.11, 0.12, 0.2]


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


def test_an_image_policy_reads_the_frame_at_the_end_of_the_observation():
    from workloads.tempovla.policy import PROPRIO_INDEX, policy_state

    torch.manual_seed(2)
    policy = SpeedPolicy(len(PROPRIO_INDEX), [16], "token", image_size=16)
    state, image = torch.randn(3, 38), torch.randint(0, 256, (3, 16, 16, 3)).float()
    obs = torch.cat([state, image.reshape(3, -1)], dim=1)  # PandaPickCube's layout with image_size=16
    acted, _ = SpeedActor(policy, SpeedCommand(speed=1.0), inputs="image").act(obs)
    motion, logit = policy(state[:, PROPRIO_INDEX], torch.ones(3), image=image)
    torch.testing.assert_close(acted[:, :3], motion[:, 0].clamp(-1, 1))
    assert torch.equal(acted[:, 3], torch.where(logit[:, 0] > 0, 1.0, -1.0))
    other, _ = policy(policy_state(state, "image"), torch.ones(3), image=255 - image)
    assert not torch.allclose(motion, other)  # the frame matters
    with pytest.raises(ValueError, match="camera frames"):
        policy(state[:, PROPRIO_INDEX], torch.ones(3))


def test_random_shift_is_an_edge_padded_crop_within_the_pad():
    from workloads.tempovla.policy import random_shift

    images = torch.randint(0, 256, (16, 8, 10, 3), dtype=torch.uint8)
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(random_shift(images, 0), images) and shifted.dtype == torch.uint8
    offsets = set()
    for original, out in zip(images.numpy(), shifted.numpy()):
        padded = np.pad(original, ((2, 2), (2, 2), (0, 0)), mode="edge")
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(padded[dy : dy + 8, dx : dx + 10], out)]
        assert matches, "not a crop of the edge-padded frame"
        offsets.add(matches[0])
    assert len(offsets) > 4  # the offsets vary across the batch
