#!/usr/bin/env bash
# An MLflow tracking server for a cluster: runs and the model registry in SQLite (or pass a
# database URI as $1), artifacts served through the server. Point jobs at it with
#   export MLFLOW_TRACKING_URI=http://<this-host>:5000
set -euo pipefail
BACKEND="${1:-sqlite:///$(pwd)/mlruns/mlflow.db}"
mkdir -p mlruns/artifacts
exec mlflow server --host 0.0.0.0 --port "${MLFLOW_PORT:-5000}" \
  --backend-store-uri "$BACKEND" --artifacts-destination "$(pwd)/mlruns/artifacts" --serve-artifacts
