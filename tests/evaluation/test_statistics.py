"""The arithmetic behind the study tables, pinned against independent computations: scipy's
matrix square root for FID, Student-t tables for the intervals, a simulation for the power."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facediff.evaluation.statistics import (
    bootstrap_fid,
    detectable_difference,
    paired,
    t_interval,
    verdict,
)
from tests.evaluation.test_metrics import frechet  # the textbook FID, with scipy's sqrtm


def features(seed=0, n_real=300, n_fake=40, dim=24):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_real, dim)) @ rng.normal(size=(dim, dim)) * 0.3
    fake = rng.normal(0.2, 1.1, size=(n_fake, dim)) @ rng.normal(size=(dim, dim)) * 0.3
    return real, fake


def test_bootstrap_fid_and_each_resample_match_scipy_sqrtm():
    real, fake = features()
    out = bootstrap_fid(real, fake, rounds=60, seed=3)
    assert out["fid"] == pytest.approx(frechet(real, fake), rel=1e-6)
    rng = np.random.default_rng(3)  # the same resamples, scored the textbook way
    draws = [frechet(real, fake[rng.integers(0, len(fake), len(fake))]) for _ in range(60)]
    fid = frechet(real, fake)  # the interval: the estimate plus the draws' centred quantiles
    lo, hi = fid + np.quantile(np.array(draws) - np.mean(draws), [0.025, 0.975])
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((lo, hi), rel=1e-5)
    assert out["bias"] == pytest.approx(np.mean(draws) - fid, rel=1e-5)
    assert out["ci_low"] < out["fid"] < out["ci_high"]


def test_bootstrap_interval_narrows_with_more_samples():
    real, small = features(n_fake=30)
    _, large = features(n_fake=400)
    a, b = bootstrap_fid(real, small, 100), bootstrap_fid(real, large, 100)
    assert b["ci_high"] - b["ci_low"] < a["ci_high"] - a["ci_low"]


def test_t_interval_against_the_t_table():
    out = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302653
    half = 4.302653 / math.sqrt(3)
    assert (out["n"], out["mean"], out["std"]) == (3, 2.0, pytest.approx(1.0))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((2 - half, 2 + half), rel=1e-6)
    one = t_interval([5.0])
    assert one["n"] == 1 and one["mean"] == 5.0 and one["ci_low"] is None and one["std"] is None


def test_detectable_difference_has_80_percent_power_by_simulation():
    """Paired t-tests on 5 pairs (t(0.975, 4) = 2.776445) whose true difference is the
    detectable one reject in 80% of 40,000 simulated studies."""
    n, sd = 5, 2.0
    delta = detectable_difference(sd, n)
    rng = np.random.default_rng(0)
    d = rng.normal(delta, sd, size=(40_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > 2.776445) == pytest.approx(0.80, abs=0.01)
    assert detectable_difference(sd, 10) < delta  # more seeds see smaller differences
    assert detectable_difference(sd, 1) is None


def test_paired_uses_the_seeds_both_ran():
    out = paired({"0": 3.0, "1": 5.0, "2": 4.0}, {"0": 1.0, "1": 2.0, "3": 9.0})
    assert out["seeds"] == ["0", "1"] and out["n"] == 2 and out["mean"] == pytest.approx(2.5)
    half = 12.706205 * math.sqrt(0.5) / math.sqrt(2)  # sd of [2, 3]; t(0.975, 1)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-6)


@pytest.mark.parametrize(
    "lo, hi, expect, margin, want",
    [
        (0.1, 0.3, "higher", 0, "held"),
        (-0.3, -0.1, "higher", 0, "reversed"),
        (-0.1, 0.3, "higher", 0, "inconclusive"),
        (-0.3, -0.1, "lower", 0, "held"),
        (0.1, 0.3, "lower", 0, "reversed"),
        (-0.01, 0.2, "not_lower", 0.02, "held"),
        (-0.05, -0.03, "not_lower", 0.02, "reversed"),
        (-0.05, 0.01, "not_lower", 0.02, "inconclusive"),
        (-0.2, 0.01, "not_higher", 0.02, "held"),
        (None, None, "higher", 0, "inconclusive"),
    ],
)
def test_verdicts(lo, hi, expect, margin, want):
    assert verdict(lo, hi, expect, margin) == want


def test_an_unknown_expectation_is_named():
    with pytest.raises(ValueError, match="expect='bigger'"):
        verdict(0, 1, "bigger")
