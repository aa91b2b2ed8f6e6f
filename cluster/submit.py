"""`rayworks submit`: run `python -m pipelines.<name>` as a Ray job on a cluster.

The project directory is uploaded as the job's working directory (Ray's JobSubmissionClient),
the job's logs are streamed here, and the exit status is the job's. The plain equivalent is
`ray job submit --address http://HEAD:8265 --working-dir . -- python -m pipelines.<name> ...`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

from cluster.connect import RayUnreachable, auth_token_hint, find_auth_token, probe
from workloads.config import ConfigError, flatten

PROJECT_ROOT = Path(__file__).resolve().parents[1]
UPLOAD_EXCLUDES = [".git", "mlruns", "ray_results", "**/__pycache__", "*.egg-info", ".pytest_cache", "build"]
# Forwarded to the job so it logs where this machine's runs go.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "HF_HOME")


class SubmitError(RuntimeError):
    pass


def check_storage_path(path: str) -> None:
    """Refuse a `storage_path` that the job's working directory would swallow.

    A submitted job runs in a temporary copy of the project that Ray deletes with the job: a
    relative path (the default `./ray_results`) resolves inside it, so the job's checkpoints and
    caches vanish when it ends and a later `--resume` finds nothing. A URI or an absolute path
    (a filesystem every node mounts) outlives the job."""
    if "://" in path or (Path(path).is_absolute() and not path.startswith("~")):
        return
    raise ConfigError(
        f"storage_path {path!r} is relative: a submitted job would keep its checkpoints and caches inside its "
        "temporary working directory, which Ray deletes when the job ends, so --resume could not find them. "
        "Point it at storage every node reaches, e.g. --set storage_path=s3://my-bucket/rayworks "
        "or storage_path=/mnt/shared/ray_results (a shared filesystem)")


def config_file_overrides(path: str | None) -> list[str]:
    """A local YAML config travels as `--set` overrides, so it need not live in the project."""
    if path is None:
        return []
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path}: not found")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in flatten(data).items()]


def entrypoint(pipeline: str, overrides: list[str], resume: bool = False) -> str:
    words = ["python", "-m", f"pipelines.{pipeline}"]
    if overrides:
        words += ["--set", *overrides]
    if resume:
        words.append("--resume")
    return shlex.join(words)


def make_client(address: str):
    from ray.job_submission import JobSubmissionClient

    probe(address)
    token = find_auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as exc:  # Ray wraps HTTP failures in several exception types
        text = str(exc)
        # Ray's client may itself complain first (e.g. "RAY_AUTH_TOKEN_PATH is set but file cannot be opened")
        no_token_reported = token is None and "token" in text.lower() and "auth" in text.lower()
        if "401" in text or "Missing authentication token" in text or no_token_reported:
            raise SubmitError(f"the cluster at {address} requires a Ray auth token and none was found: {auth_token_hint()}") from None
        if "403" in text or "Invalid authentication token" in text:
            raise SubmitError(f"the cluster at {address} rejected the Ray auth token: {auth_token_hint()}") from None
        raise SubmitError(f"could not reach the Ray job server at {address}: {text}") from None


def submit(pipeline: str, address: str, overrides: list[str], resume: bool = False, wait: bool = True) -> int:
    client = make_client(address)
    env_vars = {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}
    if "MLFLOW_TRACKING_URI" not in env_vars:
        print("note: MLFLOW_TRACKING_URI is not set; the job tracks into ./mlruns of its working directory "
              "on the head node. Point it at an MLflow server to keep the runs.", file=sys.stderr)
    job_id = _submit_when_ready(client, address, entrypoint=entrypoint(pipeline, overrides, resume),
                                runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": UPLOAD_EXCLUDES, "env_vars": env_vars},
                                metadata={"rayworks.pipeline": pipeline})
    print(f"submitted {pipeline} as Ray job {job_id} to {address}", flush=True)
    if not wait:
        return 0
    try:
        asyncio.run(_stream_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running. Stop it with: ray job stop --address {address} {job_id}")
        return 130
    status = _final_status(client, job_id)
    print(f"job {job_id} finished: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _submit_when_ready(client, address: str, timeout_s: float = 60.0, **job) -> str:
    """Submit; a head that is still starting answers "No available agent" for a few seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc):
                raise SubmitError(f"the job server at {address} refused the job: {exc}") from None
            if time.monotonic() > deadline:
                raise SubmitError(
                    f"the cluster at {address} has no job agent ready after {timeout_s:.0f} s: its dashboard agent "
                    "did not start (see dashboard_agent.log on the head; a port conflict on "
                    "--dashboard-agent-listen-port is a common cause)") from None
            time.sleep(1.0)


async def _stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def _final_status(client, job_id: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def main(pipeline: str, address: str, config: str | None, overrides: list[str], resume: bool, wait: bool) -> int:
    try:
        return submit(pipeline, address, config_file_overrides(config) + overrides, resume, wait)
    except (SubmitError, RayUnreachable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
