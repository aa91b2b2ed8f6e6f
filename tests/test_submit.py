"""`rayworks submit` against a real Ray head (token auth on), started and stopped by this test."""

from __future__ import annotations

import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import kill_session, mlflow_client, rayworks, scratch_env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` in its own process; stopped through that process, not `ray stop`."""
    home = tmp_path_factory.mktemp("head-home")
    token = secrets.token_hex(16)
    # Free ports, not Ray's fixed defaults: another local Ray on this machine (a test on the other
    # pytest worker) may hold those, e.g. the job agent's 52365, and the head's jobs never start.
    gcs_port, dashboard_port, agent_port, client_port = (_free_port() for _ in range(4))
    env = scratch_env(home, HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    head = subprocess.Popen(
        ["ray", "start", "--head", "--num-cpus", "2", "--block", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", dashboard_port), timeout=1).close()
            break
        except OSError:
            assert head.poll() is None, head.stdout.read()
            time.sleep(1)
    else:
        head.kill()
        raise AssertionError("the Ray head's dashboard did not come up")
    try:
        yield {"address": address, "token": token, "home": home}
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        kill_session(head.pid)  # whatever of the head outlived it must not hold ports for later tests
        head.wait(timeout=30)


def test_two_submitted_jobs_are_one_run_through_shared_storage(ray_head, workdir: Path):
    """The second job resumes the first's checkpoint from storage outside both jobs' working dirs."""
    env = scratch_env(workdir, HOME=str(ray_head["home"]), RAY_AUTH_TOKEN=ray_head["token"],
                      MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (workdir / "mlruns").mkdir()
    shared = workdir / "shared-storage"
    job_ids = []
    for max_steps, resume in ((10, []), (20, ["--resume"])):
        proc = rayworks(workdir, "submit", "sft", "--address", ray_head["address"], *resume,
                        "--set", f"train.max_steps={max_steps}", "train.eval_every=10", "train.checkpoint_every=10",
                        "task.num_eval=20", "register_model=false", "run_name=across-jobs", f"storage_path={shared}",
                        env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        job_ids.append(re.search(r"submitted sft as Ray job (\S+)", proc.stdout).group(1))
        assert "RESULT" in proc.stdout  # the job's own output was streamed here
        assert f"job {job_ids[-1]} finished: SUCCEEDED" in proc.stdout

    client = mlflow_client(workdir)
    (run,) = client.search_runs([client.get_experiment_by_name("rayworks-sft").experiment_id])
    assert run.data.tags["ray_job_id"] == job_ids[0] and run.info.status == "FINISHED"
    assert [int(m.value) for m in client.get_metric_history(run.info.run_id, "resumed_from_step")] == [0, 10]
    assert len([p for p in (shared / "across-jobs").glob("checkpoint_*") if p.is_dir()]) == 2


def test_submit_refuses_storage_the_job_would_delete(workdir: Path):
    proc = rayworks(workdir, "submit", "sft", "--address", "http://127.0.0.1:1", timeout=60)
    assert proc.returncode == 2
    assert "storage_path './ray_results' is relative" in proc.stderr and "s3://" in proc.stderr


def test_submit_says_when_the_token_is_missing_or_wrong(ray_head, workdir: Path):
    base = dict(HOME=str(workdir), RAY_AUTH_TOKEN_PATH=str(workdir / "no-token-here"))
    missing = rayworks(workdir, "submit", "sft", "--address", ray_head["address"], "--set", f"storage_path={workdir}",
                       env=scratch_env(workdir, **base), timeout=120)
    assert missing.returncode == 3
    assert "requires a Ray auth token and none was found" in missing.stderr
    wrong = rayworks(workdir, "submit", "sft", "--address", ray_head["address"], "--set", f"storage_path={workdir}",
                     env=scratch_env(workdir, **base, RAY_AUTH_TOKEN="not-the-token"), timeout=120)
    assert wrong.returncode == 3
    assert "rejected the Ray auth token" in wrong.stderr


def test_submit_to_a_dead_address_fails_fast(workdir: Path):
    started = time.monotonic()
    proc = rayworks(workdir, "submit", "sft", "--address", "http://127.0.0.1:1", "--set", f"storage_path={workdir}",
                    timeout=60)
    assert proc.returncode == 3 and "unreachable" in proc.stderr
    assert time.monotonic() - started < 30


def test_a_local_run_points_its_own_workers_at_itself_and_leaves_the_machine_file_alone(workdir: Path):
    """Ray's state API (Ray Train's placement-group cleaner) finds "the current cluster" through
    a file: a local run's workers must resolve their own cluster there, whatever the
    machine-wide /tmp/ray file says (a dead cluster, another run), and the run leaves it as it was."""
    from ray._private.utils import get_ray_address_file

    address_file = Path(get_ray_address_file(None))
    before = address_file.read_text() if address_file.exists() else None
    address_file.parent.mkdir(parents=True, exist_ok=True)
    address_file.write_text("10.255.0.1:6379")  # some other cluster's address
    script = (
        "import ray\n"
        "from cluster.connect import connect\n"
        "connect(None, log_to_driver=False)\n"
        "@ray.remote\n"
        "def seen():\n"
        "    from ray._private.services import canonicalize_bootstrap_address\n"
        "    return canonicalize_bootstrap_address(None)\n"
        "print(ray.get_runtime_context().gcs_address, ray.get(seen.remote()))\n"
    )
    try:
        proc = subprocess.run(["python", "-c", script], env=scratch_env(workdir), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        own, seen_by_worker = proc.stdout.strip().splitlines()[-1].split()
        assert seen_by_worker == own != "10.255.0.1:6379"
        assert address_file.read_text() == "10.255.0.1:6379"
    finally:
        if before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(before)
