"""Compare arms of one pipeline over seeds: mean and 95% confidence interval per arm.

    rayworks compare longtrace --vary reward=rubric,outcome --seeds 3 [--metric NAME ...] [--set k=v ...]

Every (arm, seed) is a full pipeline run, one after another (each already uses the whole
machine), as a child of one parent MLflow run. The parent gets, per arm and metric,
`<arm>/<metric>/mean`, `.../ci95_low`, `.../ci95_high` (Student t over seeds), and
`comparison.yaml` with every value.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

from pipelines import get_pipeline
from workloads import tracking
from workloads.config import ConfigError, load_config, refuse_overlap


@dataclasses.dataclass
class ArmResult:
    arm: str
    values: dict[str, list[float]]  # metric -> one value per seed

    def interval(self, metric: str) -> tuple[float, float, float]:
        """(mean, low, high) of the 95% Student-t interval over seeds."""
        from scipy import stats

        values = [v for v in self.values[metric] if not math.isnan(v)]
        if not values:
            return math.nan, math.nan, math.nan
        mean = statistics.fmean(values)
        if len(values) < 2:
            return mean, math.nan, math.nan
        half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        return mean, float(mean - half), float(mean + half)


def parse_vary(vary: str) -> tuple[str, list[str]]:
    field, _, values = vary.partition("=")
    arms = [v for v in values.split(",") if v]
    if not field or len(arms) < 2:
        raise ConfigError(f"--vary {vary!r}: expected FIELD=VALUE1,VALUE2[,...]")
    return field, arms


def check_comparison(pipeline: str, vary: str, seeds: int, config_path: str | None, overrides: list[str]) -> dict:
    """Every arm's config for every seed, checked before anything runs. The varied field and the
    seed are the comparison's own: `--set` may not give them too."""
    module = get_pipeline(pipeline)
    field, arms = parse_vary(vary)
    if seeds < 1:
        raise ConfigError("--seeds: must be >= 1")
    refuse_overlap(overrides, [field, "seed"], "compare sets")
    return {(arm, seed): load_config(module.Config, config_path, overrides, values={field: arm, "seed": seed})
            for arm in arms for seed in range(seeds)}


def run_comparison(pipeline: str, vary: str, seeds: int, metrics: list[str], config_path: str | None,
                   overrides: list[str]) -> dict:
    module = get_pipeline(pipeline)
    field, arms = parse_vary(vary)
    metrics = metrics or [module.KEY_METRIC]
    configs = check_comparison(pipeline, vary, seeds, config_path, overrides)
    base = next(iter(configs.values()))
    experiment = base.experiment or f"rayworks-{pipeline}"
    parent = tracking.start_run(experiment, f"compare-{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}",
                                tags={"rayworks.compare": field, "rayworks.pipeline": pipeline,
                                      "git_revision": tracking.git_revision()})
    results = {arm: ArmResult(arm, {m: [] for m in metrics}) for arm in arms}
    try:
        for (arm, seed), config in configs.items():
            print(f"\n=== compare {pipeline}: {field}={arm} seed {seed} ===", flush=True)
            summary = module.run(config, parent_run_id=parent.run_id)
            logged = tracking.client().get_run(summary.run_id).data.metrics
            for metric in metrics:
                results[arm].values[metric].append(float(logged.get(metric, math.nan)))
    except BaseException:
        parent.end("FAILED")
        raise
    arms_summary = {}
    for arm, result in results.items():
        arms_summary[arm] = {}
        for metric in metrics:
            mean, low, high = result.interval(metric)
            arms_summary[arm][metric] = {"values": result.values[metric], "mean": mean, "ci95": [low, high]}
            parent.log_metrics({f"{arm}/{metric}/mean": mean, f"{arm}/{metric}/ci95_low": low,
                                f"{arm}/{metric}/ci95_high": high}, step=0)
    outcome = {"parent_run_id": parent.run_id, "field": field, "seeds": seeds, "arms": arms_summary}
    parent.log_yaml({k: v for k, v in outcome.items() if k != "parent_run_id"}, "comparison.yaml")
    parent.end("FINISHED")
    return outcome


def print_comparison(outcome: dict) -> None:
    print(f"\n{outcome['field']} over {outcome['seeds']} seeds (95% t-interval)")
    for arm, per_metric in outcome["arms"].items():
        for metric, row in per_metric.items():
            values = ", ".join(f"{v:.3f}" for v in row["values"])
            low, high = row["ci95"]
            print(f"  {arm:<12} {metric:<36} mean {row['mean']:.3f}  [{low:.3f}, {high:.3f}]  ({values})")
