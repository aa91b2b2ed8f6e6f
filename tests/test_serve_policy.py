"""`rayworks serve policy` in a fresh process, over real HTTP: a TempoVLA policy artifact answers
observations of a real PandaPickCube with the actions the policy computes at the commanded
speed (or schedule) and drives the robot from outside the process; a PPO specialist registered
in MLflow answers by name; bad requests, commands a policy does not take and speeds outside its
trained range are refused by name."""

from __future__ import annotations

import subprocess
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


def register_ppo_specialist(workdir: Path):
    """A PPO specialist in the workdir's MLflow registry, saved as `ppo` saves it (normaliser
    statistics away from their start, so that a server that dropped them would answer otherwise)."""
    import os

    from pipelines import ppo
    from workloads import tracking
    from workloads.policies import save_policy

    config = ppo.Config()
    spec = ppo.policy_spec(config)
    torch.manual_seed(7)
    specialist = ppo.build_policy(config, spec)
    with torch.no_grad():
        specialist.obs_norm.mean.normal_()
        specialist.actor[-1].weight.normal_(std=0.3)
    (workdir / "specialist").mkdir()
    save_policy(workdir / "specialist", ppo.POLICY_KIND, specialist.state_dict(), ppo.policy_specs(config, spec))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    try:
        (workdir / "mlruns").mkdir(exist_ok=True)
        run = tracking.start_run("rayworks-ppo", "registered-for-serve")
        run.log_artifact(workdir / "specialist" / "policy.pt", "policy")
        tracking.register_model(run, "policy", ppo.registered_name(config.env))
        run.end()
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return specialist.eval(), spec


def register_handoff_student(workdir: Path):
    """A HANDOFF mixture-of-experts student registered as the pipeline registers it."""
    import os

    from pipelines import handoff
    from workloads import tracking
    from workloads.policies import load_policy, save_policy

    config = handoff.Config(num_experts=3, hidden=[32, 32], gate_hidden=16)
    specs = handoff.make_student_specs(config)
    from workloads.policies import KINDS

    torch.manual_seed(11)
    student = KINDS[handoff.STUDENT_KIND].build(specs)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.normal_(std=0.2)
    (workdir / "student").mkdir()
    save_policy(workdir / "student", handoff.STUDENT_KIND, student.state_dict(), specs)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    try:
        (workdir / "mlruns").mkdir(exist_ok=True)
        run = tracking.start_run("rayworks-handoff", "registered-for-serve")
        run.log_artifact(workdir / "student" / "policy.pt", "policy")
        tracking.register_model(run, "policy", handoff.REGISTERED)
        run.end()
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return load_policy(workdir / "student")


def test_policy_endpoint(workdir: Path, artifact: Path):
    from envs.panda import PandaPickCube, PandaReach
    from workloads.tempovla.policy import SpeedActor, SpeedCommand, load_policy_artifact

    specialist, spec = register_ppo_specialist(workdir)
    student, student_specs = register_handoff_student(workdir)
    proc, lines = start_app(workdir, "policy", PORT, "--checkpoint", str(artifact))
    try:
        wait_for(lines, "is up at", timeout=180)
        health = requests.get(f"{URL}/healthz", timeout=30).json()
        default = health["policies"][health["default"]]
        assert default["observation_dim"] == 38 and default["speed_range"] == [0.5, 2.0] and default["augment"] == "vsta"
        assert default["action_mode"] == "ee" and default["chunk"] == 2 and set(default["command"]) == {"speed", "schedule"}

        policy, _ = load_policy_artifact(artifact)
        task = PandaPickCube(3, seed=0, action_mode="ee")
        start = task.gripper.copy()
        for _ in range(10):  # the robot driven through HTTP
            obs = task.observe()
            answer = requests.post(f"{URL}/act", json={"observation": obs.tolist(), "command": {"speed": 1.5}}, timeout=30).json()
            expected = SpeedActor(policy, SpeedCommand(speed=1.5)).predict(torch.from_numpy(obs))
            np.testing.assert_allclose(answer["actions"], expected[:, 0].numpy(), atol=1e-5)
            np.testing.assert_allclose(answer["chunk"], expected.numpy(), atol=1e-5)  # the whole chunk, in order
            assert answer["speeds"] == [1.5] * 3 and answer["policy"] == health["default"]
            task.step(np.asarray(answer["actions"], dtype=np.float32))
        assert np.linalg.norm(task.gripper - start, axis=1).min() > 1e-3  # it moved
        obs = task.observe()
        slow = requests.post(f"{URL}/act", json={"observation": obs.tolist(), "command": {"speed": 0.5}}, timeout=30).json()
        assert not np.allclose(slow["actions"], answer["actions"])  # the speed reaches the policy
        scheduled = requests.post(f"{URL}/act", json={"observation": obs.tolist(),
                                                      "command": {"schedule": {"fast": 2.0, "slow": 0.5, "near": 1.0}}},
                                  timeout=30).json()
        assert scheduled["speeds"] == [0.5] * 3  # every cube is within 1 m and on the table
        one = requests.post(f"{URL}/act", json={"observation": obs[0].tolist(), "command": {"speed": 0.5}}, timeout=30).json()
        np.testing.assert_allclose(one["actions"], slow["actions"][0], atol=1e-5)  # one row in, one row out

        # a PPO specialist from the registry, by name, acting as in process (the Gaussian's mean)
        reach = PandaReach(2, seed=3)
        obs = reach.observe()
        answer = requests.post(f"{URL}/act", json={"policy": "rayworks-ppo-PandaReach-v0", "observation": obs.tolist()},
                               timeout=60).json()
        np.testing.assert_allclose(answer["actions"], specialist.act(torch.from_numpy(obs), deterministic=True)[0].numpy(),
                                   atol=1e-5)
        health = requests.get(f"{URL}/healthz", timeout=30).json()
        assert health["policies"]["rayworks-ppo-PandaReach-v0"]["env"] == "rayworks/PandaReach-v0"

        # the HANDOFF student by name, told which task to do: the mode reaches the gate
        from envs.g1 import G1Recovery
        from workloads.policies import act

        fallen = G1Recovery(2, seed=1).observe()
        body = {"policy": "rayworks-handoff-student", "observation": fallen.tolist(), "command": {"mode": "recovery"}}
        answer = requests.post(f"{URL}/act", json=body, timeout=60).json()
        expected = act(student, student_specs, fallen.tolist(), {"mode": "recovery"})
        np.testing.assert_allclose(answer["actions"], expected["actions"].numpy(), atol=1e-5)
        np.testing.assert_allclose(answer["gate"], expected["gate"].numpy(), atol=1e-5)
        walking = requests.post(f"{URL}/act", json={**body, "command": {"mode": "velocity"}}, timeout=30).json()
        assert not np.allclose(walking["gate"], answer["gate"])
        refused = requests.post(f"{URL}/act", json={**body, "command": {"mode": "dance"}}, timeout=30)
        assert refused.status_code == 422 and "command.mode: expected one of" in refused.text

        reach_width = spec.obs_dim
        for body, status, named in (
                ({"observation": [[0.0] * 37], "command": {"speed": 1.0}}, 422, "observation[0]: expected 38"),
                ({"observation": [0.0] * 37, "command": {"speed": 1.0}}, 422, "observation: expected 38"),
                ({"observation": [[0.0] * 38], "command": {"speed": 3.0}}, 422, "command.speed: 3.0 is outside the trained range"),
                ({"observation": [[0.0] * 38], "command": {"schedule": {"fast": 2.5, "slow": 0.5}}}, 422, "command.schedule.fast"),
                ({"observation": [[0.0] * 38]}, 422, "command: give either speed or schedule"),
                ({"observation": [[0.0] * 38], "command": {"speed": 1.0, "turbo": 1}}, 422, "command.turbo: not a command"),
                ({"policy": "rayworks-ppo-PandaReach-v0", "observation": [[0.0] * reach_width], "command": {"speed": 1.0}}, 422,
                 "command.speed: not a command of this policy (it takes none)"),
                ({"policy": "rayworks-nothing", "observation": [[0.0] * 38]}, 404, "policy: no policy 'rayworks-nothing'"),
                ({"policy": "a'b", "observation": [[0.0] * 38]}, 422, "policy"),
                ({"observation": [[0.0] * 38, "x"]}, 422, "observation"),
                ({"observation": [[0.0] * 38], "turbo": 1}, 422, "turbo: Extra inputs are not permitted")):
            answer = requests.post(f"{URL}/act", json=body, timeout=30)
            assert answer.status_code == status and named in answer.text, (body, answer.text)
        not_json = requests.post(f"{URL}/act", data=b'{"observation": [[0.0,', headers={"content-type": "application/json"}, timeout=30)
        assert not_json.status_code == 400 and "body: not valid JSON" in not_json.text, not_json.text
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


def test_direct_ingress_serves_on_the_port_given(workdir: Path, artifact: Path):
    """`--direct-ingress`: the replica itself answers on --port (no Serve proxy there), the same
    actions as in process, and bad requests are still named; refused against a cluster address."""
    from workloads.tempovla.policy import SpeedActor, SpeedCommand, load_policy_artifact

    refused = rayworks(workdir, "serve", "policy", "--checkpoint", str(artifact), "--direct-ingress",
                       "--address", "127.0.0.1:6379", timeout=120)
    assert refused.returncode == 2 and "--direct-ingress: starts a local Ray" in refused.stderr, refused.stderr[-2000:]

    port = free_port()
    proc, lines = start_app(workdir, "policy", port, "--checkpoint", str(artifact), "--direct-ingress")
    try:
        wait_for(lines, "is up at", timeout=180)
        listening = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert "ServeRepli" in listening and "ProxyActor" not in listening, listening
        policy, _ = load_policy_artifact(artifact)
        obs = np.random.default_rng(0).uniform(-1, 1, (4, 38)).astype(np.float32)
        answer = requests.post(f"http://127.0.0.1:{port}/act", json={"observation": obs.tolist(), "command": {"speed": 1.5}},
                               timeout=30)
        assert answer.status_code == 200, answer.text
        expected = SpeedActor(policy, SpeedCommand(speed=1.5)).predict(torch.from_numpy(obs))
        np.testing.assert_allclose(answer.json()["actions"], expected[:, 0].numpy(), atol=1e-5)
        wrong = requests.post(f"http://127.0.0.1:{port}/act", json={"observation": [[0.0] * 37], "command": {"speed": 1.0}},
                              timeout=30)
        assert wrong.status_code == 422 and "observation[0]: expected 38" in wrong.text, wrong.text
        # the body is parsed by hand, yet the published schema is still the request model's
        schema = requests.get(f"http://127.0.0.1:{port}/openapi.json", timeout=30).json()
        body = schema["paths"]["/act"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert {"policy", "observation", "command"} <= set(body["properties"]) and body.get("additionalProperties") is False, body
    finally:
        assert stop_with_ctrl_c(proc) == 0
