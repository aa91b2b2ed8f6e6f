"""Fresh-process CLI runs of the sft pipeline: config errors, killed-and-resumed runs (the quickstart: tests/test_quickstart.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (
    assert_both_ranks_hold,
    mlflow_client,
    python_module,
    rayworks,
    result_lines,
    saved_model_fingerprint,
    scratch_env,
)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "sft", "--set", "train.lr=fast"], "sft.train.lr: expected float"),
        (["run", "sft", "--set", "train.nonsense=1"], "sft.train.nonsense: unknown field"),
        (["run", "sft", "--set", "model.hidden_size=130"], "sft.model.hidden_size: must be divisible"),
        (["run", "sft", "--config", "missing.yaml"], "config file missing.yaml: not found"),
        (["run", "nosuch"], "unknown pipeline 'nosuch'; known pipelines: code2lora, code2lora_data, distil, handoff, longtrace, longtrace_data, ppo, sft"),
        (["serve", "nosuch"], "unknown Serve app 'nosuch'; known apps: adapter, generate"),
    ],
)
def test_config_errors_fail_fast_naming_the_field(workdir: Path, args, fragment):
    started = time.monotonic()
    proc = rayworks(workdir, *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "ray_results").exists()  # failed before Ray started
    assert time.monotonic() - started < 60


def test_unreachable_address_fails_within_30s(workdir: Path):
    started = time.monotonic()
    proc = rayworks(workdir, "run", "sft", "--address", "127.0.0.1:1", timeout=60)
    assert proc.returncode == 3
    assert "unreachable" in proc.stderr and "127.0.0.1:1" in proc.stderr
    assert time.monotonic() - started < 30


def test_python_dash_m_is_the_same_entry_point(workdir: Path):
    proc = python_module(workdir, "pipelines.sft", "--set", "train.batch_size=0", timeout=120)
    assert proc.returncode == 2 and "sft.train.batch_size: must be >= 1" in proc.stderr


def _checkpoints(workdir: Path, run_name: str) -> list[Path]:
    """Checkpoints Ray Train has committed (listed in its manager snapshot)."""
    run_dir = workdir / "ray_results" / run_name
    if not (run_dir / "checkpoint_manager_snapshot.json").is_file():
        return []
    return sorted(run_dir.glob("checkpoint_*"))


def test_killed_run_resumes_with_the_same_step_counter(workdir: Path):
    run_name = "resume-me"
    args = ["run", "sft", "--set", f"run_name={run_name}", "train.max_steps=300",
            "train.checkpoint_every=100", "train.eval_every=100", "register_model=false"]
    first = subprocess.Popen(["rayworks", *args], cwd=workdir, env=scratch_env(workdir),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _checkpoints(workdir, run_name) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    assert _checkpoints(workdir, run_name), "no checkpoint appeared before the deadline"
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
    first.wait(timeout=60)

    client = mlflow_client(workdir)
    (killed,) = client.search_runs(client.get_experiment_by_name("rayworks-sft").experiment_id)
    steps_before = [m.step for m in client.get_metric_history(killed.info.run_id, "train_loss")]
    assert steps_before and steps_before[-1] < 300

    resumed = rayworks(workdir, *args, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    (summary,) = result_lines(resumed.stdout)
    assert summary["run_id"] == killed.info.run_id  # the same MLflow run shows both parts
    resumed_from = [m.value for m in client.get_metric_history(killed.info.run_id, "resumed_from_step")]
    assert resumed_from[0] == 0 and resumed_from[-1] >= 100  # second part started from a checkpoint
    steps = sorted({m.step for m in client.get_metric_history(killed.info.run_id, "train_loss")})
    assert steps == list(range(10, 301, 10))
    assert client.get_run(killed.info.run_id).info.status == "FINISHED"


def test_fresh_run_refuses_to_reuse_a_name(workdir: Path):
    client_args = ["run", "sft", "--set", "run_name=taken", "--resume"]
    proc = rayworks(workdir, *client_args, timeout=120)
    assert proc.returncode == 2 and "no sft run named 'taken' to resume" in proc.stderr


def test_two_workers_train_with_ddp_over_gloo_on_a_tokenizer_without_bos(workdir: Path):
    proc = rayworks(workdir, "run", "sft", "--set", "train.num_workers=2", "train.max_steps=20", "train.eval_every=20",
                    "train.checkpoint_every=20", "train.batch_size=8", "task.num_eval=20", "register_model=false",
                    "model.tokenizer=qwen2", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = result_lines(proc.stdout)
    client = mlflow_client(workdir)
    samples = client.get_metric_history(summary["run_id"], "samples_seen")
    assert samples[-1].value == 20 * 8 * 2  # both ranks consumed their own shard every step
    assert_both_ranks_hold(client, summary["run_id"], saved_model_fingerprint(client, summary["run_id"], workdir))
