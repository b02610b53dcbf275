"""The arithmetic behind facediff-report's uncertainty, one function per figure.

- `bootstrap_fid`: a job's FID with a centred bootstrap interval over its generated samples
  (the reference images fixed), from the features the protocol extracted once.
- `t_interval`: a setting's mean over seeds with its 95% Student-t interval.
- `paired`: a setting's difference to a baseline, paired by seed, with its interval and the
  smallest difference the seeds could have detected (`detectable_difference`).
- `verdict`: held, reversed or inconclusive, from an interval and the claimed direction.

scipy gives the t and non-central t distributions; tests/evaluation/test_statistics.py pins each
figure against an independent computation (scipy's sqrtm, a simulation, t tables).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
POWER = 0.80
EXPECTATIONS = ("higher", "lower", "not_lower", "not_higher")


def _moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def bootstrap_fid(
    real: np.ndarray, fake: np.ndarray, rounds: int = 200, level: float = LEVEL, seed: int = 0
) -> dict:
    """FID between (N, D) real and (n, D) generated features, and a 95% bootstrap interval of
    its spread over draws of the generated samples (`rounds` resamples with replacement, a
    fixed seed; the reference statistics fixed).

    A resample repeats about a third of the samples, which lowers their diversity and raises
    FID: the resamples' FIDs sit above the estimate (11 points for the demo's 64 samples), and
    their plain percentiles can miss it. The interval is therefore centred: the estimate plus the
    2.5 and 97.5 % quantiles of the resamples' deviations from their own mean (`bias` is that
    mean minus the estimate). It says how far the figure moves with another draw of n samples,
    not where the FID of infinitely many samples lies (FID at n is biased upwards; compare FIDs
    at equal n only).

    The trace of sqrt(S_r S_f) is taken from the n x n matrix X S_r X^T / (n - 1) of the centred
    resample X (the same non-zero eigenvalues), so a round costs O(n^3), not O(D^3)."""
    mu_r, s_r = _moments(real)
    f = np.asarray(fake, dtype=np.float64)
    n = len(f)
    if n < 2:
        raise ValueError(f"bootstrap_fid: {n} generated samples; at least 2 are needed")
    gram = f @ s_r @ f.T  # F S_r F^T, once
    sq = (f * f).sum(1)
    centre = np.eye(n) - 1.0 / n
    tr_r = np.trace(s_r)

    def fid(idx: np.ndarray) -> float:
        mu_f = f[idx].mean(0)
        tr_f = (sq[idx].sum() - n * mu_f @ mu_f) / (n - 1)
        m = centre @ gram[np.ix_(idx, idx)] @ centre / (n - 1)
        root = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
        return float(((mu_r - mu_f) ** 2).sum() + tr_r + tr_f - 2 * root)

    rng = np.random.default_rng(seed)
    draws = np.array([fid(rng.integers(0, n, n)) for _ in range(rounds)])
    estimate = fid(np.arange(n))
    lo, hi = estimate + np.quantile(draws - draws.mean(), [(1 - level) / 2, (1 + level) / 2])
    return {
        "fid": estimate,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "bias": float(draws.mean() - estimate),
        "rounds": rounds,
    }


def t_interval(values, level: float = LEVEL) -> dict:
    """n, mean, std (n - 1) and the Student-t interval of the mean; the interval is None with
    fewer than two values (one seed says nothing about the spread)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = len(v)
    out = {"n": n, "mean": float(v.mean()) if n else None, "std": None}
    out |= {"ci_low": None, "ci_high": None}
    if n >= 2:
        sd = float(v.std(ddof=1))
        half = stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
        out |= {"std": sd, "ci_low": out["mean"] - half, "ci_high": out["mean"] + half}
    return out


def detectable_difference(
    sd: float, n: int, level: float = LEVEL, power: float = POWER
) -> float | None:
    """The smallest true mean difference a two-sided paired t-test on `n` pairs with this
    standard deviation of the differences finds at `1 - level` significance with `power`:
    solved on the non-central t distribution (no normal approximation). None below 2 pairs."""
    if n < 2 or sd is None:
        return None
    if sd == 0:
        return 0.0
    df, crit = n - 1, stats.t.ppf((1 + level) / 2, n - 1)

    def gap(delta: float) -> float:
        nc = delta * math.sqrt(n) / sd
        upper, lower = stats.nct.sf(crit, df, nc), stats.nct.cdf(-crit, df, nc)
        if not math.isfinite(upper):  # scipy's series fails far in the tail
            upper = 1.0 if nc > crit else 0.0
        return upper + (lower if math.isfinite(lower) else 0.0) - power

    hi = sd
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=sd * 1e-9))


def paired(setting: dict, baseline: dict, level: float = LEVEL, power: float = POWER) -> dict:
    """`setting - baseline` over the seeds both have ({seed: value} each): n, the mean
    difference, its std, Student-t interval, and the detectable difference at `power`."""
    seeds = sorted(set(setting) & set(baseline), key=str)
    diffs = [setting[s] - baseline[s] for s in seeds]
    out = t_interval(diffs, level)
    out["seeds"] = seeds
    out["detectable"] = detectable_difference(out["std"], out["n"], level, power)
    return out


def verdict(ci_low, ci_high, expect: str, margin: float = 0.0) -> str:
    """held / reversed / inconclusive for a claimed difference (setting - baseline):
    `higher` holds where the whole interval is above 0 and is reversed where it is below;
    `lower` the mirror; `not_lower` (non-inferiority) holds where the interval is above
    -margin and is reversed where it is below -margin; `not_higher` the mirror."""
    if expect not in EXPECTATIONS:
        raise ValueError(f"claim expect={expect!r}: expected one of {EXPECTATIONS}")
    if ci_low is None or ci_high is None:
        return "inconclusive"
    sign = 1 if expect in ("higher", "not_lower") else -1
    lo, hi = sorted((sign * ci_low, sign * ci_high))
    bound = -margin if expect.startswith("not_") else 0.0
    if lo > bound:
        return "held"
    if hi < bound:
        return "reversed"
    return "inconclusive"


__all__ = [
    "EXPECTATIONS",
    "bootstrap_fid",
    "detectable_difference",
    "paired",
    "t_interval",
    "verdict",
]
