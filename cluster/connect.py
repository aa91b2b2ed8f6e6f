"""The one place that decides how Ray is reached.

- No address (and no `RAY_ADDRESS`): start a local single-node Ray with `num_cpus` CPUs
  (default: `RAYWORKS_NUM_CPUS`, else every core of the machine).
- An address (`--address` or `RAY_ADDRESS`): `host:port` of a GCS, `ray://host:10001`, or
  `auto`. The address is probed over TCP first, so a dead one fails in seconds with a clear
  message instead of hanging inside `ray.init`.

Clients of an authenticated cluster (Ray >= 2.59 turns token auth on for `ray start --head`)
need the cluster's token; `find_auth_token` looks where Ray does and says where it looked.

This module imports nothing else from the project, so pipelines and the CLI can both use it.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 5.0
# Actors running numpy/torch/mujoco side by side must not each spawn a thread per core.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# glibc raises its mmap threshold after each large free, so the gathered-parameter and gradient
# buffers that FSDP and ZeRO free layer by layer would stay in the heap and a sharded worker's
# resident memory would grow to a whole replica's (benchmarks.train_memory); a fixed 1 MiB
# threshold returns every buffer of that size to the system when it is freed.
WORKER_ENV = {**SINGLE_THREAD_ENV, "MALLOC_MMAP_THRESHOLD_": "1048576"}


class BadLocalRaySetting(ValueError):
    """`--num-cpus` or `RAYWORKS_NUM_CPUS` is not a positive whole number."""


class RayUnreachable(ConnectionError):
    """The configured Ray address does not answer."""


class AuthTokenMissing(RuntimeError):
    """The cluster wants a token and none was found."""


def resolve_address(address: str | None) -> str | None:
    """`--address` wins over `RAY_ADDRESS`; empty or 'local' means a local Ray."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "", "local"):
        return None
    return address


def _host_port(address: str) -> tuple[str, int] | None:
    if address == "auto":
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.hostname is None:
        raise RayUnreachable(f"Ray address {address!r}: expected host:port, ray://host:port or http://host:port")
    default_port = {"ray": 10001, "http": 8265, "https": 443}.get(parsed.scheme, 6379)
    return parsed.hostname, parsed.port or default_port


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise RayUnreachable unless a TCP connection to `address` opens within `timeout_s`."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayUnreachable(
            f"Ray address {address!r} is unreachable ({target[0]}:{target[1]}: {exc}). "
            "Is the cluster up? Pass --address HOST:6379 (or set RAY_ADDRESS), or omit it for local mode."
        ) from None


def find_auth_token() -> str | None:
    """The token Ray would use: RAY_AUTH_TOKEN, the file at RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(path_env)] if path_env else [Path.home() / ".ray" / "auth_token"]
    for path in candidates:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


def auth_token_hint() -> str:
    where = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return (
        f"looked in RAY_AUTH_TOKEN and {where}. Copy the head node's token there "
        "(on the head: `ray get-auth-token`) or export RAY_AUTH_TOKEN=<token>"
    )


def own_current_cluster_file() -> tuple[dict[str, str], Callable[[str], None]]:
    """A current-cluster file of this run's own, for its workers.

    Ray's state API (which Ray Train's placement-group cleaner polls) finds the cluster through
    `$RAY_TMPDIR/ray/ray_current_cluster`. Left to the machine-wide /tmp/ray file it finds a
    stale address (every training run then waits out a 12 s shutdown timeout) or, worse, the
    address of another run on this machine (its cleaner then sees no controller and removes a
    live placement group). So the workers get RAY_TMPDIR pointing at a directory of this run,
    whose file names this cluster, and the machine-wide file is never touched.
    Returns (env vars for the workers, a function that writes the file given the GCS address)."""
    import shutil
    import tempfile

    run_dir = Path(tempfile.mkdtemp(prefix="rayworks-cluster-"))
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)

    def write(gcs_address: str) -> None:
        (run_dir / "ray").mkdir(exist_ok=True)
        (run_dir / "ray" / "ray_current_cluster").write_text(gcs_address)

    return {"RAY_TMPDIR": str(run_dir)}, write


def local_cpus(num_cpus: int | None = None) -> int:
    """CPUs for a local Ray: `num_cpus`, else `RAYWORKS_NUM_CPUS`, else the machine's cores."""
    if num_cpus is None and os.environ.get("RAYWORKS_NUM_CPUS"):
        try:
            num_cpus = int(os.environ["RAYWORKS_NUM_CPUS"])
        except ValueError:
            raise BadLocalRaySetting(f"RAYWORKS_NUM_CPUS: expected a whole number, got {os.environ['RAYWORKS_NUM_CPUS']!r}") from None
    if num_cpus is not None and num_cpus < 1:
        raise BadLocalRaySetting(f"--num-cpus (or RAYWORKS_NUM_CPUS): must be >= 1, got {num_cpus}")
    return num_cpus or os.cpu_count() or 1


def connect(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True):
    """Initialise Ray for this process (no-op when already initialised); return the address used."""
    import ray

    if ray.is_initialized():
        return resolve_address(address)
    target = resolve_address(address)
    runtime_env = {"env_vars": dict(WORKER_ENV)}
    if target is None:
        own_file_env, write_own_file = own_current_cluster_file()
        runtime_env["env_vars"].update(own_file_env)
        start = dict(
            address="local",  # never attach to some other Ray that happens to run here
            num_cpus=local_cpus(num_cpus),
            runtime_env=runtime_env,
            log_to_driver=log_to_driver,
            configure_logging=True,
            logging_level="WARNING" if log_to_driver else "ERROR",  # quiet: the console is for progress
        )
        try:
            ray.init(**start)
        except Exception as exc:
            # Ray gives its raylet a fixed 30 s to register; on a machine busy with other work
            # (two cores, a compile) that can pass. One more try, from a clean slate.
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            ray.init(**start)
        write_own_file(ray.get_runtime_context().gcs_address)
        return None
    if target.startswith(("http://", "https://")):
        raise RayUnreachable(
            f"Ray address {target!r} is a dashboard URL: `rayworks submit` takes that; "
            "`run` needs the GCS address (HOST:6379) or ray://HOST:10001"
        )
    probe(target)
    if find_auth_token() is not None:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        ray.init(address=target, runtime_env=runtime_env, log_to_driver=log_to_driver, logging_level="WARNING")
    except Exception as exc:  # Ray raises several types here; all mean "could not join"
        hint = ""
        if "auth" in str(exc).lower() or "token" in str(exc).lower():
            hint = " Authentication failed: " + auth_token_hint()
        raise RayUnreachable(f"could not join Ray at {target!r}: {exc}.{hint}") from None
    return target


def ray_job_submission_id() -> str | None:
    """The submission id when this driver runs as a `ray job submit` entrypoint."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
