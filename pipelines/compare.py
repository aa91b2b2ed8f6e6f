"""Compare arms of one pipeline over seeds: paired differences with 95% intervals.

    rayworks compare longtrace --vary reward=rubric,outcome --seeds 5 [--metric NAME ...] [--set k=v ...]

Every (arm, seed) is a full pipeline run, one after another (each already uses the whole
machine), as a child of one parent MLflow run; seeds are 0..N-1 for every arm, so runs with the
same seed share their data and are paired (`workloads/comparison.py`). The first arm is the
reference. The parent gets, per arm and metric, `<arm>/<metric>/mean` and `.../ci95_low|high`;
per other arm, `<arm>-minus-<reference>/<metric>/mean` and its interval; and
`comparison.yaml` with every value, the number of seeds and the threats to validity the
design does not control (generic ones and the pipeline's `THREATS`), which the printed table
repeats. A metric is read as the run's last logged value; a pipeline that keeps a selected
checkpoint rather than the last one logs that reader's values as `kept/<metric>`, read first.
"""

from __future__ import annotations

import math
import time

from pipelines import get_pipeline
from workloads import tracking
from workloads.comparison import GENERIC_THREATS, paired_differences, t_interval
from workloads.config import ConfigError, load_config, refuse_overlap


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
    values = {arm: {metric: [] for metric in metrics} for arm in arms}  # metric values indexed by seed
    try:
        for (arm, seed), config in configs.items():
            print(f"\n=== compare {pipeline}: {field}={arm} seed {seed} ===", flush=True)
            summary = module.run(config, parent_run_id=parent.run_id)
            logged = tracking.client().get_run(summary.run_id).data.metrics
            for metric in metrics:
                values[arm][metric].append(float(logged.get(f"kept/{metric}", logged.get(metric, math.nan))))
    except BaseException:
        parent.end("FAILED")
        raise
    reference = arms[0]
    arms_summary, paired = {}, {}
    for arm in arms:
        arms_summary[arm] = {}
        for metric in metrics:
            mean, low, high = t_interval(values[arm][metric])
            arms_summary[arm][metric] = {"values": values[arm][metric], "mean": mean, "ci95": [low, high]}
            parent.log_metrics({f"{arm}/{metric}/mean": mean, f"{arm}/{metric}/ci95_low": low,
                                f"{arm}/{metric}/ci95_high": high}, step=0)
    for metric in metrics:
        for arm, difference in paired_differences({a: values[a][metric] for a in arms}, reference).items():
            paired.setdefault(arm, {})[metric] = difference.to_dict()
            low, high = difference.ci95
            parent.log_metrics({f"{arm}-minus-{reference}/{metric}/mean": difference.mean,
                                f"{arm}-minus-{reference}/{metric}/ci95_low": low,
                                f"{arm}-minus-{reference}/{metric}/ci95_high": high}, step=0)
    threats = [*GENERIC_THREATS, *getattr(module, "THREATS", ())]
    outcome = {"parent_run_id": parent.run_id, "field": field, "seeds": seeds, "reference": reference,
               "arms": arms_summary, "paired": paired, "threats": threats}
    parent.log_yaml({k: v for k, v in outcome.items() if k != "parent_run_id"}, "comparison.yaml")
    parent.end("FINISHED")
    return outcome


def print_comparison(outcome: dict) -> None:
    print(f"\n{outcome['field']} over {outcome['seeds']} seeds (0..{outcome['seeds'] - 1}, the same for every arm; "
          "95% t-intervals)")
    for arm, per_metric in outcome["arms"].items():
        for metric, row in per_metric.items():
            values = ", ".join(f"{v:.3f}" for v in row["values"])
            low, high = row["ci95"]
            print(f"  {arm:<12} {metric:<36} mean {row['mean']:.3f}  [{low:.3f}, {high:.3f}]  ({values})")
    reference = outcome["reference"]
    print(f"paired differences, arm - {reference}, seed by seed")
    for arm, per_metric in outcome["paired"].items():
        for metric, row in per_metric.items():
            low, high = row["ci95"]
            print(f"  {arm + ' - ' + reference:<24} {metric:<36} {row['mean']:+.3f}  [{low:+.3f}, {high:+.3f}]  "
                  f"{row['pairs']} pairs: {row['verdict']}")
    print("not controlled by this design:")
    for threat in outcome["threats"]:
        print(f"  - {threat}")
