"""VSTA's re-timing, checked against values worked out by hand: merged and split steps keep the
summed displacement, lengths scale by 1/c, gripper events stay where they were (no merged step
straddles one), every frame can start a sampled step, and a non-composable action type is refused."""

import math

import numpy as np
import pytest

from workloads.tempovla.vsta import Demonstration, NotComposable, VSTASampler, retime, retime_episode, segment


def test_merging_and_splitting_by_hand():
    actions = np.array([[1.0], [2.0], [3.0], [4.0]])
    merged, frames = retime(actions, 2.0)
    assert merged[:, 0].tolist() == [3.0, 7.0] and frames.tolist() == [0, 2]
    split, frames = retime(actions, 0.5)
    assert split[:, 0].tolist() == [0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0] and frames.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # c = 1.5 over [1, 2, 3]: the grid 0, 1.5, 3 cuts the middle frame in half
    odd, frames = retime(np.array([[1.0], [2.0], [3.0]]), 1.5)
    assert odd[:, 0].tolist() == [2.0, 4.0] and frames.tolist() == [0, 1]
    # an offset grid starts mid-chunk: from 1 with c = 2 over [1, 2, 3, 4] is [2 + 3, 4]
    offset, frames = retime(actions, 2.0, offset=1)
    assert offset[:, 0].tolist() == [5.0, 4.0] and frames.tolist() == [1, 3]


@pytest.mark.parametrize("speed", [0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
def test_retimed_chunk_keeps_its_displacement_and_scales_its_length(speed):
    actions = np.random.default_rng(0).normal(size=(17, 3))
    retimed, frames = retime(actions, speed)
    np.testing.assert_allclose(retimed.sum(axis=0), actions.sum(axis=0), atol=1e-12)
    assert len(retimed) == math.ceil(17 / speed) and abs(len(retimed) - 17 / speed) < 1
    assert frames[0] == 0 and np.all(np.diff(frames) >= 0) and frames[-1] < 17


def test_segments_end_at_gripper_events_and_turns():
    x, y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    motion = np.stack([x] * 5 + [y] * 5 + [y] * 4)
    gripper = np.array([1] * 10 + [-1] * 4)
    assert segment(motion, gripper) == [(0, 5), (5, 10), (10, 14)]
    # a slow drift within 60 degrees of the chunk's heading is one chunk
    drift = np.stack([np.array([1.0, 0.1 * t, 0.0]) for t in range(6)])
    assert segment(drift, np.ones(6)) == [(0, 6)]


def test_an_episode_at_speed_two_keeps_every_gripper_event_in_order():
    rng = np.random.default_rng(1)
    gripper = np.array([1.0] * 9 + [-1.0] * 7 + [1.0] * 5)
    motion = rng.uniform(0.1, 1.0, size=(21, 3))  # one direction throughout: only the gripper cuts
    fast, fast_gripper, source = retime_episode(motion, gripper, 2.0)
    runs = [g for i, g in enumerate(fast_gripper) if i == 0 or g != fast_gripper[i - 1]]
    assert runs == [1.0, -1.0, 1.0]
    assert len(fast) == math.ceil(9 / 2) + math.ceil(7 / 2) + math.ceil(5 / 2)
    np.testing.assert_allclose(fast.sum(axis=0), motion.sum(axis=0), atol=1e-12)
    # no merged step straddles the grasp at frame 9 or the release at 16
    assert 9 in source.tolist() and 16 in source.tolist()
    slow, slow_gripper, _ = retime_episode(motion, gripper, 0.5)
    assert len(slow) == 42 and (slow_gripper == -1).sum() == 14


def test_every_frame_is_a_sampled_start_and_steps_stop_at_the_chunk_end():
    rng = np.random.default_rng(2)
    demos = [Demonstration(rng.normal(size=(n, 4)), rng.uniform(0.1, 1.0, size=(n, 3)), np.array([1.0] * 6 + [-1.0] * (n - 6)))
             for n in (11, 14)]
    sampler = VSTASampler(demos, speeds=(0.5, 1.0, 2.0), seed=0)
    batch = sampler.sample(4000)
    assert {(int(d), int(t)) for d, t in zip(batch["demo"], batch["frame"])} == {(d, t) for d, n in enumerate((11, 14)) for t in range(n)}
    assert batch["state"].shape == (4000, 4) and batch["motion"].shape == (4000, 1, 3) and set(batch["speed"]) == {0.5, 1.0, 2.0}
    motion = demos[0].motion
    _, step, grip = sampler.example(0, 2, 2.0)
    np.testing.assert_allclose(step, motion[2] + motion[3])
    _, step, _ = sampler.example(0, 5, 2.0)  # the last frame before the grasp: the step ends with its chunk
    np.testing.assert_allclose(step, motion[5])
    _, step, _ = sampler.example(0, 2, 0.5)
    np.testing.assert_allclose(step, motion[2] / 2)
    assert grip == 1.0


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
def test_a_window_from_the_first_frame_is_the_start_of_the_retimed_episode(speed):
    """Action chunking's targets: the steps a window strings together, chunk end by chunk end,
    are exactly `retime_episode`'s; past the demonstration they are padding, marked invalid."""
    rng = np.random.default_rng(5)
    motion = rng.uniform(0.1, 1.0, size=(13, 3))
    gripper = np.array([1.0] * 5 + [-1.0] * 8)
    sampler = VSTASampler([Demonstration(np.zeros((13, 2)), motion, gripper)], speeds=(speed,))
    expected, expected_gripper, _ = retime_episode(motion, gripper, speed)
    horizon = len(expected) + 3
    window, window_gripper, valid = sampler.window(0, 0, speed, horizon)
    assert valid.tolist() == [True] * len(expected) + [False] * 3
    np.testing.assert_allclose(window[: len(expected)], expected, atol=1e-12)
    np.testing.assert_array_equal(window_gripper[: len(expected)], expected_gripper)
    assert not window[len(expected):].any() and (window_gripper[len(expected):] == gripper[-1]).all()
    batch = sampler.sample(8, horizon=4)
    assert batch["motion"].shape == (8, 4, 3) and batch["gripper"].shape == (8, 4) and batch["valid"].shape == (8, 4)


def test_a_non_composable_action_type_is_refused_by_name():
    with pytest.raises(NotComposable, match="joint_position"):
        retime_episode(np.ones((4, 3)), np.ones(4), 2.0, action_type="joint_position")
    with pytest.raises(NotComposable, match="joint_position"):
        VSTASampler([], speeds=(1.0,), action_type="joint_position")
    with pytest.raises(ValueError, match="speed"):
        retime(np.ones((4, 3)), 0.0)
