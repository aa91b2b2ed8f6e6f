"""Ray Tune over any pipeline's config fields, with ASHA early stopping.

A search space file names dotted config fields and a distribution for each:

    metric: eval_accuracy      # reported by the pipeline; default: its TUNE_METRIC, else its key metric
    mode: max
    space:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      train.batch_size: {choice: [16, 32]}
      train.warmup_steps: {randint: [10, 50]}
      seed: {grid: [0, 1]}

Every trial is a full pipeline run (its own MLflow run, a child of the search's parent run);
each trial drives its own Ray Train run, whose reports reach Tune through TuneReportCallback.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import yaml

from pipelines import get_pipeline
from pipelines.launch import storage_path
from workloads import tracking
from workloads.config import ConfigError, load_config, refuse_overlap

TRIAL_DRIVER_MEMORY = 256 * 1024**2
DISTRIBUTIONS = {
    "uniform": lambda tune, args: tune.uniform(*args),
    "loguniform": lambda tune, args: tune.loguniform(*args),
    "randint": lambda tune, args: tune.randint(*args),
    "choice": lambda tune, args: tune.choice(args),
    "grid": lambda tune, args: tune.grid_search(args),
}


@dataclasses.dataclass
class SearchSpace:
    space: dict[str, tuple[str, list]]
    metric: str
    mode: str


def load_space(path: str | Path, pipeline: str, config_path: str | None, overrides: list[str]) -> SearchSpace:
    """Read and check a space file: known fields, known distributions, values of the field's type."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"search space {path}: not found")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("space"), dict) or not data["space"]:
        raise ConfigError(f"search space {path}: expected a mapping with a non-empty 'space' section")
    space = {}
    for field, spec in data["space"].items():
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            raise ConfigError(f"search space {path}: space.{field}: expected one of {{{', '.join(DISTRIBUTIONS)}: [...]}}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search space {path}: space.{field}.{kind}: expected a non-empty list")
        space[field] = (kind, args)
    refuse_overlap(overrides, space, "the search samples")
    module = get_pipeline(pipeline)
    if not hasattr(module, "step_budget") and not hasattr(module.Config(), "train"):
        raise ConfigError(f"{pipeline}: has no training loop that reports to Tune; tune a training pipeline instead")
    # Every candidate value must make a valid config: fail now, not in trial 7.
    for field, (kind, args) in space.items():
        samples = args if kind in ("choice", "grid") else args[:2]
        for sample in samples:
            if kind == "randint":
                sample = int(sample)
            load_config(module.Config, config_path, overrides, values={field: sample})
    mode = data.get("mode", getattr(module, "TUNE_MODE", "max"))  # a pipeline whose metric is a loss says min
    if mode not in ("max", "min"):
        raise ConfigError(f"search space {path}: mode: expected max or min, got {mode!r}")
    # A pipeline with a validation split names it (`TUNE_METRIC`): trials are chosen on it, not on the test metric.
    return SearchSpace(space, data.get("metric", getattr(module, "TUNE_METRIC", module.KEY_METRIC)), mode)


def run_search(pipeline: str, space_path: str, num_samples: int, config_path: str | None,
               overrides: list[str], max_concurrent: int = 2) -> dict[str, Any]:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler

    module = get_pipeline(pipeline)
    search = load_space(space_path, pipeline, config_path, overrides)
    base = load_config(module.Config, config_path, overrides)
    max_t, grace_period = step_budget(module, base)  # before the parent run: a pipeline may refuse the search
    experiment = base.experiment or f"rayworks-{pipeline}"
    parent = tracking.start_run(experiment, f"tune-{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}",
                                tags={"rayworks.tune": "parent", "rayworks.pipeline": pipeline,
                                      "git_revision": tracking.git_revision()})
    parent.log_text(Path(space_path).read_text(), "search_space.yaml")
    parent.set_tags({"metric": search.metric, "mode": search.mode, "num_samples": num_samples})

    store = tracking.tracking_uri()  # resolved here: Tune runs trials in their own directories

    storage = storage_path(base.storage_path)  # likewise: trials would resolve ./ray_results in their own dirs

    def trial(params: dict) -> None:
        os.environ["MLFLOW_TRACKING_URI"] = store
        config = load_config(module.Config, config_path, overrides, values={"storage_path": storage, **params})
        module.run(config, parent_run_id=parent.run_id, train_callbacks=[TuneReportCallback()])

    tuner = tune.Tuner(
        # The trial only drives a Ray Train run: it asks for memory, not CPUs, which belong to
        # its training workers (so two 1-worker trials fit on 2 CPUs).
        tune.with_resources(trial, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}),
        param_space={field: DISTRIBUTIONS[kind](tune, args) for field, (kind, args) in search.space.items()},
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            scheduler=ASHAScheduler(time_attr="step", max_t=max_t, grace_period=min(max_t, grace_period), reduction_factor=2),
        ),
        run_config=tune.RunConfig(name=f"tune-{pipeline}-{parent.run_id[:8]}", storage_path=storage_path(base.storage_path), verbose=1),
    )
    try:
        results = tuner.fit()
        best = results.get_best_result(metric=search.metric, mode=search.mode)
    except BaseException:
        parent.end("FAILED")
        raise
    close_stopped_children(experiment, parent.run_id, any_trial_errored=bool(results.errors))
    parent.log_metrics({f"best_{search.metric}": best.metrics[search.metric], "num_trials": len(results)}, step=0)
    parent.log_yaml({"best_params": best.config, "best_metrics": {k: v for k, v in best.metrics.items() if isinstance(v, (int, float))}}, "best_trial.yaml")
    parent.end("FINISHED")
    return {"parent_run_id": parent.run_id, "best_params": best.config, "best_value": best.metrics[search.metric],
            "metric": search.metric, "num_trials": len(results), "errors": len(results.errors)}


def step_budget(module, config) -> tuple[int, int]:
    """(training steps, evaluation interval): what ASHA's `step` counts and its grace period."""
    if hasattr(module, "step_budget"):
        return module.step_budget(config)
    return config.train.max_steps, config.train.eval_every


def close_stopped_children(experiment: str, parent_run_id: str, any_trial_errored: bool) -> None:
    """Trials that ASHA stopped were interrupted mid-run (left RUNNING, or FAILED by the
    interruption when no trial really errored): mark their MLflow runs as stopped early."""
    client = tracking.client()
    interrupted = {"RUNNING"} if any_trial_errored else {"RUNNING", "FAILED"}
    children = client.search_runs([tracking.experiment_id(experiment)],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    for child in (c for c in children if c.info.status in interrupted):
        client.set_tag(child.info.run_id, "rayworks.stopped_early", "asha")
        client.set_terminated(child.info.run_id, "KILLED")
