"""Helpers for fresh-process CLI runs in a scratch directory with their own MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def scratch_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def rayworks(workdir: Path, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `rayworks` console script in a fresh process, in `workdir`."""
    return subprocess.run(
        ["rayworks", *args], cwd=workdir, env=env or scratch_env(workdir),
        capture_output=True, text=True, timeout=timeout,
    )


def python_module(workdir: Path, module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=workdir, env=scratch_env(workdir),
        capture_output=True, text=True, timeout=timeout,
    )


def result_lines(stdout: str) -> list[dict]:
    import json

    return [json.loads(line.removeprefix("RESULT ")) for line in stdout.splitlines() if line.startswith("RESULT ")]


def mlflow_client(workdir: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
