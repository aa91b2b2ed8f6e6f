"""Paired comparison statistics, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from workloads.comparison import paired_differences, t_interval

T_975_DF2 = 4.30265273  # Student t quantile 0.975 with 2 degrees of freedom (tables, 9 digits)
T_975_DF3 = 3.18244631


def test_t_interval_of_three_values():
    mean, low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
    half = T_975_DF2 / math.sqrt(3)
    assert mean == 2.0 and low == pytest.approx(2.0 - half, abs=1e-8) and high == pytest.approx(2.0 + half, abs=1e-8)
    assert t_interval([math.nan, 5.0])[0] == 5.0 and math.isnan(t_interval([5.0])[1])
    assert all(math.isnan(v) for v in t_interval([]))


def test_pairing_removes_the_spread_both_arms_share():
    # Seeds differ a lot (0.2 .. 0.8) but the arm is 0.05 better on every seed: each arm's own
    # interval overlaps the other's, the paired interval is tight and excludes zero.
    reference = [0.2, 0.5, 0.8, 0.35]
    arm = [0.26, 0.54, 0.85, 0.40]
    (difference,) = paired_differences({"ref": reference, "arm": arm}, "ref").values()
    diffs = [0.06, 0.04, 0.05, 0.05]  # by hand; mean 0.05, sd sqrt(0.0002/3)
    assert difference.differences == pytest.approx(diffs)
    half = T_975_DF3 * math.sqrt(0.0002 / 3) / 2
    assert difference.mean == pytest.approx(0.05) and difference.ci95 == pytest.approx((0.05 - half, 0.05 + half))
    assert difference.verdict == "higher" and difference.pairs == 4
    _, ref_low, ref_high = t_interval(reference)
    _, arm_low, arm_high = t_interval(arm)
    assert arm_low < ref_high  # unpaired, the arms' intervals overlap


def test_a_seed_missing_in_either_arm_drops_out_of_its_pair_only():
    result = paired_differences({"a": [1.0, math.nan, 3.0], "b": [0.0, 1.0, math.nan], "c": [2.0, 2.0, 2.0]}, "a")
    assert result["b"].differences == [-1.0] and result["b"].verdict == "too few seeds for an interval"
    assert result["c"].differences == [1.0, -1.0] and result["c"].verdict == "no clear difference"
    with pytest.raises(ValueError, match="not paired"):
        paired_differences({"a": [1.0, 2.0], "b": [1.0]}, "a")
