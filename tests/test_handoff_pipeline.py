"""The handoff pipeline beyond its quickstart run: DAgger collection depends on its seed alone
(not on the worker process's history), a killed run resumes from its checkpoint with
the same iteration counter, and a Tune trial over the number of experts and the mixing schedule
reports to Tune. (Learning, two ranks, evaluation and registration: the quickstart test.)"""

from pathlib import Path

import numpy as np
import yaml

from tests.helpers import mlflow_client, rayworks, result_lines

# The quickstart test renders and registers; these runs check resume and Tune, so they do neither.
TINY = ["modes=[velocity,recovery]", "envs_per_task=4", "steps_per_iteration=10", "eval_steps=20", "eval_every=2",
        "pin_threads=false", "render=false", "register_model=false"]


def test_rollout_workers_run_a_saved_student_through_the_artifact_format(local_ray, tmp_path: Path):
    """Rollout workers take any policy artifact: here a HANDOFF student acting on fall recovery,
    deterministically, exactly as it acts in process."""
    import torch

    from actors.rollout import ArtifactSpec, RolloutGroup
    from envs.g1 import G1Recovery
    from pipelines import handoff
    from workloads.policies import KINDS, save_policy

    specs = handoff.make_student_specs(handoff.Config(num_experts=2, hidden=[16, 16], gate_hidden=8))
    torch.manual_seed(3)
    student = KINDS[handoff.STUDENT_KIND].build(specs)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.normal_(std=0.2)
    save_policy(tmp_path, handoff.STUDENT_KIND, student.state_dict(), specs)
    spec, weights = ArtifactSpec.read(tmp_path)
    group = RolloutGroup("rayworks/G1Recovery-v0", 1, 3, 0, {}, spec, pin_threads=False, timeout_s=300)
    try:
        block = group.collect(weights, 4, deterministic=True).batch
    finally:
        group.shutdown()
    assert block.obs.shape == (4, 3, G1Recovery(1, 0).observation_dim) and block.actions.shape == (4, 3, 29)
    expected, _ = student.act(torch.from_numpy(block.obs.reshape(12, -1)), deterministic=True)
    np.testing.assert_allclose(block.actions.reshape(12, 29), expected.numpy(), atol=1e-5)


def test_dagger_collection_is_a_function_of_its_seed_not_of_the_process(local_ray):
    """Ray may hand a DAgger worker a process whose torch generator has already moved (a reused
    worker): the student's sampled actions, and so the states visited, must not depend on it."""
    import ray
    import torch

    from actors.handoff import DaggerWorker, PolicyTeacher
    from pipelines import handoff
    from workloads.policies import KINDS

    config = handoff.Config(modes=["recovery"], num_experts=2, hidden=[16, 16], gate_hidden=8)
    specs = handoff.make_student_specs(config)
    teachers = {"recovery": ray.remote(PolicyTeacher).remote(handoff.check_teachers(config)["recovery"])}
    torch.manual_seed(5)
    state = KINDS[handoff.STUDENT_KIND].build(specs).state_dict()
    blocks = []
    for moved in (0, 1000):
        torch.randn(moved)  # what an earlier task in the same process may have drawn
        worker = DaggerWorker(["recovery"], teachers, specs, envs_per_task=2, seed=11, env_params={})
        blocks.append(worker.collect(state, steps=5, mixing=0.0))
        worker.close()
    assert blocks[0]["obs"].shape == (10, specs["observation_dim"])
    np.testing.assert_array_equal(blocks[0]["obs"], blocks[1]["obs"])
    assert not np.array_equal(blocks[0]["obs"][:2], blocks[0]["obs"][-2:])  # the robots moved


def test_handoff_resumes_from_its_checkpoint(workdir: Path):
    first = rayworks(workdir, "run", "handoff", "--set", "iterations=2", "run_name=resumed", *TINY, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (result,) = result_lines(first.stdout)
    again = rayworks(workdir, "run", "handoff", "--set", "iterations=4", "run_name=resumed", *TINY, "--resume", timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    (resumed,) = result_lines(again.stdout)
    assert resumed["run_id"] == result["run_id"]
    client = mlflow_client(workdir)
    iterations = [m.step for m in client.get_metric_history(result["run_id"], "iteration")]
    assert sorted(iterations) == [1, 2, 3, 4]  # 3 and 4 after the checkpoint at 2, nothing repeated
    # the evaluation before training is the one the first run made, carried in the checkpoint
    assert resumed["before"] == result["before"] and np.isfinite(resumed["value"])
    losses = client.get_metric_history(result["run_id"], "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]


def test_tune_handoff_over_experts_and_mixing(workdir: Path):
    space = workdir / "space.yaml"
    space.write_text(yaml.safe_dump({"space": {"num_experts": {"choice": [2, 6]}, "mixing.start": {"uniform": [0.2, 0.8]}}}))
    proc = rayworks(workdir, "tune", "handoff", "--space", str(space), "--num-samples", "1", "--set", "iterations=2",
                    *TINY, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (outcome,) = result_lines(proc.stdout)
    assert outcome["num_trials"] == 1 and outcome["errors"] == 0 and np.isfinite(outcome["best_value"])
