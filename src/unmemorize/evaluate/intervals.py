"""Uncertainty of every reported number: Wilson intervals, bootstrap intervals, rank-correlation tests.

* Accuracy of k correct out of n (strict memorization, task accuracy): the 95% Wilson score
  interval, z = 1.959964::

      centre = (p + z^2/(2n)) / (1 + z^2/n),  half = z/(1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2)),  p = k/n

  It stays inside [0, 1] and is not degenerate at 0% or 100% (unlike the normal approximation).
* Retention = accuracy_after / accuracy_before on the same rows: a percentile bootstrap over rows
  (rows resampled with replacement, the same resample for both numerators; ``resamples`` draws,
  seeded), 2.5% and 97.5% quantiles. Undefined (``None``) when the baseline has no correct row.
* Spearman rank correlation: scipy's coefficient and its two-sided p-value (t distribution with
  n - 2 degrees of freedom); n < 3 gives ``None`` for both.
* Across seeds: mean and sample standard deviation (ddof = 1) of the per-seed values. Seeds are the
  unit of replication: ``over_seeds`` gives the two-sided 95% t interval of the mean over seeds,
  mean +- t(0.975, n-1) * std / sqrt(n) (never the items of several seeds pooled as one sample), and
  ``paired_over_seeds`` the paired t test of "A differs from B" over seeds (scipy's ``ttest_rel``,
  two-sided): with 3 seeds a difference is shown only when it is large and consistent.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054


@dataclass
class Interval:
    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def wilson(correct: int, n: int, z: float = Z95) -> Interval:
    """The 95% Wilson score interval of ``correct`` successes in ``n`` trials (fractions in [0, 1])."""
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    if not 0 <= correct <= n:
        raise ValueError(f"wilson: correct={correct} outside 0..{n}")
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def wilson_of_fraction(fraction: float, n: int) -> Interval:
    """``wilson`` for an accuracy stored as a fraction of ``n`` rows (rounded to the nearest count)."""
    return wilson(int(round(fraction * n)), n)


def bootstrap_retention(before: list[bool], after: list[bool], resamples: int = 2000, seed: int = 0) -> Interval | None:
    """Retention sum(after)/sum(before) with a 95% percentile bootstrap interval over rows."""
    if len(before) != len(after) or not before:
        raise ValueError("bootstrap_retention: before and after must be equal-length, non-empty")
    n = len(before)
    if sum(before) == 0:
        return None
    value = sum(after) / sum(before)
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        rows = [rng.randrange(n) for _ in range(n)]
        base = sum(before[r] for r in rows)
        if base:
            draws.append(sum(after[r] for r in rows) / base)
    draws.sort()
    low = draws[int(0.025 * (len(draws) - 1))]
    high = draws[int(math.ceil(0.975 * (len(draws) - 1)))]
    return Interval(value, low, high, n)


def spearman(x: list[float], y: list[float]) -> dict:
    """{"spearman", "p_value", "n"}: scipy.stats.spearmanr, two-sided; None when n < 3 or a side is constant."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    if n < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return {"spearman": None, "p_value": None, "n": n}
    result = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return {"spearman": float(result.statistic), "p_value": float(result.pvalue), "n": n}


def mean_std(values: list[float | None]) -> dict:
    """{"mean", "std", "n"} over the values that are not None (std: ddof=1; None with fewer than 2)."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)) if len(kept) > 1 else None
    return {"mean": mean, "std": std, "n": len(kept)}


def format_wilson(interval: Interval, digits: int = 1) -> str:
    """'53.0 [46.1, 59.8] (n=200)' in percent."""
    return f"{100 * interval.value:.{digits}f} [{100 * interval.low:.{digits}f}, {100 * interval.high:.{digits}f}] (n={interval.n})"


def over_seeds(values: list[float | None], bounds: tuple[float, float] | None = None) -> dict:
    """{"per_seed", "mean", "std", "n", "low", "high"}: the per-seed values, their mean, sample std and the
    two-sided 95% t interval of the mean over seeds (low/high None with fewer than 2 seeds; std 0 gives a
    zero-width interval), clipped to ``bounds`` when given ((0, 1) for a fraction: a t interval knows no
    range). Values that are None or not finite are left out of the statistics."""
    from scipy.stats import t

    stats = mean_std(values)
    low = high = None
    if stats["n"] >= 2:
        half = float(t.ppf(0.975, stats["n"] - 1)) * stats["std"] / math.sqrt(stats["n"])
        low, high = stats["mean"] - half, stats["mean"] + half
        if bounds is not None:
            low, high = max(bounds[0], low), min(bounds[1], high)
    return {"per_seed": list(values), **stats, "low": low, "high": high}


def paired_over_seeds(first: list[float], second: list[float]) -> dict:
    """{"mean_difference", "t", "p_value", "n", "differences"}: the paired t test over seeds of first - second
    (scipy.stats.ttest_rel, two-sided). ``p_value`` None with fewer than 2 seeds, or when every seed's
    difference is the same (no spread to test against; the differences are still given)."""
    from scipy.stats import ttest_rel

    pairs = [(a, b) for a, b in zip(first, second) if a is not None and b is not None]
    differences = [a - b for a, b in pairs]
    n = len(pairs)
    mean = sum(differences) / n if n else None
    if n < 2 or len(set(differences)) < 2:
        return {"mean_difference": mean, "t": None, "p_value": None, "n": n, "differences": differences}
    result = ttest_rel([a for a, _ in pairs], [b for _, b in pairs])
    return {"mean_difference": mean, "t": float(result.statistic), "p_value": float(result.pvalue), "n": n, "differences": differences}


def format_over_seeds(stats: dict, scale: float = 100, digits: int = 1) -> str:
    """'5.7 [-11.0, 22.4] (0.0 / 4.0 / 13.0)': the mean over seeds, its t interval, each seed's value."""
    if stats.get("mean") is None:
        return "-"
    text = f"{scale * stats['mean']:.{digits}f}"
    if stats.get("low") is not None:
        text += f" [{scale * stats['low']:.{digits}f}, {scale * stats['high']:.{digits}f}]"
    per_seed = stats.get("per_seed", [])
    seeds = [v for v in (per_seed.values() if isinstance(per_seed, dict) else per_seed) if v is not None]
    if len(seeds) > 1:
        text += " (" + " / ".join(f"{scale * v:.{digits}f}" for v in seeds) + ")"
    return text
