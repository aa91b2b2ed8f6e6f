"""PPO specialists end to end: rollout workers on real Ray (one killed mid-collection), the
pipeline learning G1 fall recovery and resuming it, a Tune search, bad configs. Learning on Panda
reach is checked by the quickstart test (the embedded default)."""

import threading
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from tests.helpers import mlflow_client, rayworks, result_lines

SMALL = ["render=false", "eval_every=10"]


def test_a_killed_rollout_worker_is_replaced_and_the_iteration_completes(local_ray):
    from actors.rollout import PolicySpec, RolloutGroup
    from workloads.ppo import ActorCritic

    spec = PolicySpec(30, 31, 7, (32,))
    group = RolloutGroup("rayworks/PandaReach-v0", 2, 4, 0, {}, spec, pin_threads=False, timeout_s=120)
    policy = ActorCritic(30, 31, 7, (32,))
    steps = 3000  # long enough that the kill below lands mid-collection
    killer = threading.Timer(0.5, lambda: ray.kill(group.workers[0], no_restart=True))
    killer.start()
    try:
        collected = group.collect(policy.state_dict(), steps)
    finally:
        killer.join()
        group.shutdown()
    assert group.replacements == 1
    block = collected.batch
    assert block.obs.shape == (steps, 8, 30) and block.critic_obs.shape == (steps, 8, 31)
    assert block.actions.shape == (steps, 8, 7) and block.last_critic_obs.shape == (8, 31)
    assert block.truncated.sum() == 8 * steps // 100 and not block.terminated.any()  # 100-step episodes
    assert len(collected.episodes["return"]) == 8 * steps // 100
    rows = block.truncated
    assert np.abs(block.final_critic_obs[rows]).sum(axis=1).min() > 0  # final observations kept for bootstrapping


def run_ppo(workdir: Path, *overrides: str, timeout: float = 900):
    proc = rayworks(workdir, "run", "ppo", "--set", *overrides, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = result_lines(proc.stdout)
    return result


def test_g1_recovery_return_improves_and_resume_continues(workdir: Path):
    g1 = ["env=rayworks/G1Recovery-v0", "envs_per_worker=16", "steps_per_iteration=25", "run_name=recovery", *SMALL]
    result = run_ppo(workdir, "iterations=30", *g1)
    initial, final = result["extra"]["initial_return"], result["value"]
    assert final - initial > 0.5, (initial, final)  # measured: -0.165 -> 1.004 (the torque term makes the start negative)
    resumed = run_ppo(workdir, "iterations=32", *g1, "--resume")
    assert resumed["run_id"] == result["run_id"]
    client = mlflow_client(workdir)
    iterations = [m.step for m in client.get_metric_history(result["run_id"], "iteration")]
    assert sorted(iterations) == list(range(1, 33))  # 31 and 32 after the checkpoint at 30, nothing repeated
    assert client.get_run(result["run_id"]).info.status == "FINISHED"


def test_tune_ppo_over_learning_rate_entropy_and_clip(workdir: Path):
    space = workdir / "space.yaml"
    space.write_text(yaml.safe_dump({"space": {"ppo.lr": {"loguniform": [3e-4, 3e-3]},
                                               "ppo.entropy_coef": {"choice": [0.0, 0.01]},
                                               "ppo.clip": {"uniform": [0.1, 0.3]}}}))
    # One trial: the ppo fields reach the trainable and its metric reaches Tune (searches of
    # several trials are checked on sft and longtrace).
    proc = rayworks(workdir, "tune", "ppo", "--space", str(space), "--num-samples", "1", "--set", "iterations=4",
                    "eval_every=2", "num_rollout_workers=1", "envs_per_worker=8", "steps_per_iteration=25",
                    "render=false", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (outcome,) = result_lines(proc.stdout)
    assert outcome["num_trials"] == 1 and outcome["errors"] == 0 and np.isfinite(outcome["best_value"])
    assert {"ppo.lr", "ppo.entropy_coef", "ppo.clip"} <= set(outcome["best_params"])


@pytest.mark.parametrize("override, message", [
    ("env=rayworks/Nope-v0", "ppo.env: unknown environment 'rayworks/Nope-v0'"),
    ("env_params.bogus=1", "ppo.env_params.bogus: unknown field; known fields of env_params: action_mode"),
    ("env_params.episode_steps=long", "ppo.env_params.episode_steps: expected int, got 'long'"),
    ("env_params.target_low=[0.1,0.2]", "ppo.env_params.target_low: expected 3 values"),
    ("ppo.minibatches=0", "ppo.ppo"),
])
def test_bad_config_is_named(workdir: Path, override: str, message: str):
    proc = rayworks(workdir, "run", "ppo", "--set", override, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
