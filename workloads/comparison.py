"""Paired comparison of a pipeline's arms over seeds (plain Python; `rayworks compare` uses it).

Every arm runs with the same seeds 0..N-1, and a seed fixes the data, the initialisation and
the sampling, so arm A's run with seed s and the reference arm's run with seed s are a pair.
The effect of A is estimated from the per-seed differences A[s] - reference[s]: their mean and
a 95% Student-t interval. Pairing removes the seed-to-seed spread both arms share, which an
interval on each arm alone keeps (two overlapping per-arm intervals can hide a consistent
difference). A seed where either arm has no value (NaN) drops out of that pair only.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

# What no comparison here controls, said with every result. Pipelines add their own (`THREATS`).
GENERIC_THREATS = (
    "tiny models and short runs: effects measured here may not hold at real model sizes and budgets",
    "few seeds: the t-interval assumes roughly normal seed-to-seed variation, and a handful of seeds detects only large effects",
    "one configuration per arm: no tuning per arm, so an arm may lose to a setting, not to its method",
)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% Student-t interval of the mean; NaNs dropped; no interval under 2 values."""
    from scipy import stats

    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclasses.dataclass
class PairedDifference:
    arm: str
    reference: str
    differences: list[float]  # arm - reference, per seed that both have
    mean: float
    ci95: tuple[float, float]

    @property
    def pairs(self) -> int:
        return len(self.differences)

    @property
    def verdict(self) -> str:
        """'higher' / 'lower' when the interval excludes 0, else 'no clear difference'."""
        low, high = self.ci95
        if math.isnan(low):
            return "too few seeds for an interval"
        return "higher" if low > 0 else "lower" if high < 0 else "no clear difference"

    def to_dict(self) -> dict:
        return {"arm": self.arm, "reference": self.reference, "differences": self.differences, "mean": self.mean,
                "ci95": list(self.ci95), "pairs": self.pairs, "verdict": self.verdict}


def paired_differences(values_by_arm: dict[str, list[float]], reference: str) -> dict[str, PairedDifference]:
    """Each other arm against `reference`, seed by seed (the lists are indexed by seed)."""
    base = values_by_arm[reference]
    out = {}
    for arm, values in values_by_arm.items():
        if arm == reference:
            continue
        if len(values) != len(base):
            raise ValueError(f"arm {arm!r} has {len(values)} seeds, {reference!r} has {len(base)}: not paired")
        differences = [a - b for a, b in zip(values, base) if not (math.isnan(a) or math.isnan(b))]
        mean, low, high = t_interval(differences)
        out[arm] = PairedDifference(arm, reference, differences, mean, (low, high))
    return out
