"""`rayworks serve policy` in a fresh process, over real HTTP: a TempoVLA policy artifact answers
observations of a real PandaPickCube with the actions the policy computes at the commanded
speed (or schedule), drives the robot from outside the process, and refuses bad requests and
speeds outside its trained range by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from serving.fuzzing import fuzz_app
from tests.helpers import free_port, rayworks, start_app, stop_with_ctrl_c, wait_for

PORT = free_port()
URL = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """An untrained policy whose speed conditioning is not the identity, predicting chunks of 2
    actions, saved as the pipeline saves it."""
    from workloads.tempovla.policy import PolicyConfig, SpeedPolicy, policy_specs, save_policy_artifact

    torch.manual_seed(5)
    policy = SpeedPolicy(25, [32, 32], "film", np.linspace(-1, 1, 25), np.linspace(0.5, 2, 25), chunk=2)
    with torch.no_grad():
        policy.film.weight.normal_(std=0.5)
    path = tmp_path_factory.mktemp("policy") / "policy.pt"
    save_policy_artifact(path, policy.state_dict(), policy_specs(25, PolicyConfig(hidden=[32, 32], chunk=2), [0.5, 1.0, 2.0], "vsta"))
    return path


def test_policy_endpoint(workdir: Path, artifact: Path):
    from envs.panda import PandaPickCube
    from workloads.tempovla.policy import SpeedActor, SpeedCommand, load_policy_artifact

    proc, lines = start_app(workdir, "policy", PORT, "--checkpoint", str(artifact))
    try:
        wait_for(lines, "is up at", timeout=180)
        health = requests.get(f"{URL}/healthz", timeout=30).json()
        assert health["observation_dim"] == 38 and health["speed_range"] == [0.5, 2.0] and health["augment"] == "vsta"
        assert health["action_mode"] == "ee" and health["chunk"] == 2

        policy, _ = load_policy_artifact(artifact)
        task = PandaPickCube(3, seed=0, action_mode="ee")
        start = task.gripper.copy()
        for _ in range(10):  # the robot driven through HTTP
            obs = task.observe()
            answer = requests.post(f"{URL}/act", json={"observations": obs.tolist(), "speed": 1.5}, timeout=30).json()
            expected = SpeedActor(policy, SpeedCommand(speed=1.5)).predict(torch.from_numpy(obs))
            np.testing.assert_allclose(answer["actions"], expected[:, 0].numpy(), atol=1e-5)
            np.testing.assert_allclose(answer["chunk"], expected.numpy(), atol=1e-5)  # the whole chunk, in order
            assert answer["speeds"] == [1.5] * 3
            task.step(np.asarray(answer["actions"], dtype=np.float32))
        assert np.linalg.norm(task.gripper - start, axis=1).min() > 1e-3  # it moved
        slow = requests.post(f"{URL}/act", json={"observations": task.observe().tolist(), "speed": 0.5}, timeout=30).json()
        assert not np.allclose(slow["actions"], answer["actions"])  # the speed reaches the policy
        scheduled = requests.post(f"{URL}/act", json={"observations": task.observe().tolist(),
                                                      "schedule": {"fast": 2.0, "slow": 0.5, "near": 1.0}}, timeout=30).json()
        assert scheduled["speeds"] == [0.5] * 3  # every cube is within 1 m and on the table

        for body, named in (({"observations": [[0.0] * 37], "speed": 1.0}, "observations[0]: expected 38"),
                            ({"observations": [[0.0] * 38], "speed": 3.0}, "speed: 3.0 is outside the trained range"),
                            ({"observations": [[0.0] * 38], "schedule": {"fast": 2.5, "slow": 0.5}}, "schedule.fast"),
                            ({"observations": [[0.0] * 38]}, "give either speed or schedule")):
            answer = requests.post(f"{URL}/act", json=body, timeout=30)
            assert answer.status_code == 422 and named in answer.text, (body, answer.text)
        assert fuzz_app(URL, "policy") == []
    finally:
        assert stop_with_ctrl_c(proc) == 0


def test_a_checkpoint_that_is_not_a_policy_is_named(workdir: Path):
    proc = rayworks(workdir, "serve", "policy", "--checkpoint", str(workdir / "nothing-here"), "--port", str(free_port()), timeout=120)
    assert proc.returncode == 2 and "no policy artifact" in proc.stderr, proc.stderr[-2000:]
    (workdir / "junk.pt").write_bytes(b"not a policy")
    proc = rayworks(workdir, "serve", "policy", "--checkpoint", str(workdir / "junk.pt"), "--port", str(free_port()), timeout=120)
    assert proc.returncode == 2 and "junk.pt: not a policy artifact" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
