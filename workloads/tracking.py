"""MLflow tracking shared by every pipeline and the Serve apps (no Ray here).

Store: `MLFLOW_TRACKING_URI` when set; otherwise a SQLite store at `./mlruns/mlflow.db`
with artifacts in `./mlruns/artifacts`: local, file-based, and (unlike MLflow's legacy
plain-file store) it supports the model registry.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from workloads.config import flatten

LOCAL_STORE_DIR = "mlruns"
MAX_PARAM_LENGTH = 6000

# MLflow logs a line per database migration and per artifact upload; keep the console for progress.
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = Path(LOCAL_STORE_DIR).resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def _local_artifact_root() -> str | None:
    """Artifacts next to the local SQLite store (MLflow would use ./mlartifacts otherwise)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str) -> str:
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_local_artifact_root())
    except Exception:  # created concurrently by another trial
        return mlflow_client.get_experiment_by_name(name).experiment_id


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class Run:
    """An MLflow run addressed by (store URI, run id): usable from any process, driver or
    Ray worker (whose working directory differs, so the URI travels explicitly)."""

    def __init__(self, run_id: str, uri: str | None = None):
        self.run_id = run_id
        self.uri = uri or tracking_uri()
        self._client = client(self.uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(config).items()]
        existing = self._client.get_run(self.run_id).data.params
        params = [p for p in params if p.key not in existing]  # params are write-once (resume)
        for start in range(0, len(params), 100):
            self._client.log_batch(self.run_id, params=params[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            if value is not None:
                self._client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            target.write_text(text)
            self.log_artifact(target)

    def log_yaml(self, data: dict, name: str) -> None:
        self.log_text(yaml.safe_dump(data, sort_keys=False), name)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self._client.get_metric_history(self.run_id, key))

    @property
    def artifact_uri(self) -> str:
        return self._client.get_run(self.run_id).info.artifact_uri

    def end(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.run_id, status)


def start_run(
    experiment: str,
    run_name: str,
    tags: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
) -> Run:
    """A new run (child of `parent_run_id` when given), or `resume_run_id` reopened."""
    mlflow_client = client()
    if resume_run_id:
        mlflow_client.update_run(resume_run_id, status="RUNNING")
        run = Run(resume_run_id)
    else:
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        info = mlflow_client.create_run(experiment_id(experiment), run_name=run_name, tags={k: str(v) for k, v in all_tags.items() if v is not None})
        run = Run(info.info.run_id)
    return run


def register_model(run: Run, artifact_path: str, name: str) -> str:
    """Register `runs:/<id>/<artifact_path>` as a new version of `name`; return the version."""
    mlflow_client = client(run.uri)
    try:
        mlflow_client.create_registered_model(name)
    except Exception:  # already exists
        pass
    version = mlflow_client.create_model_version(
        name, source=f"{run.artifact_uri}/{artifact_path}", run_id=run.run_id
    )
    return version.version


def newest_registered_model(name: str, uri: str | None = None) -> Path | None:
    """Download the newest version of registered model `name`; None when there is none."""
    uri = uri or tracking_uri()
    mlflow_client = client(uri)
    try:
        versions = mlflow_client.search_model_versions(f"name='{name}'")
    except Exception:
        return None
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(artifact_uri=newest.source, tracking_uri=uri))
