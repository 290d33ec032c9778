"""Intervals against independent computations: statsmodels-free Wilson oracle, scipy, exact bootstrap facts."""

import json
import math

import pytest

from unmemorize.evaluate.intervals import bootstrap_retention, mean_std, spearman, wilson
from unmemorize.jsonio import strict_dumps, strict_loads


def test_wilson_matches_the_closed_form_from_scipy_norm():
    from scipy.stats import norm

    z = norm.ppf(0.975)
    for k, n in [(0, 10), (10, 10), (53, 100), (1, 200), (199, 200)]:
        p = k / n
        # Wilson (1927) written as the roots of (p - x)^2 = z^2 x (1 - x) / n
        a, b, c = 1 + z * z / n, -(2 * p + z * z / n), p * p
        roots = sorted(((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a), (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
        got = wilson(k, n)
        assert got.low == pytest.approx(max(0.0, roots[0]), abs=1e-12)
        assert got.high == pytest.approx(min(1.0, roots[1]), abs=1e-12)
    assert wilson(0, 50).low == 0.0 and wilson(0, 50).high > 0.05  # not degenerate at 0%


def test_bootstrap_retention_brackets_the_value_and_is_exact_when_nothing_changes():
    before = [True] * 80 + [False] * 20
    same = bootstrap_retention(before, list(before))
    assert (same.value, same.low, same.high) == (1.0, 1.0, 1.0)
    after = [True] * 40 + [False] * 60
    half = bootstrap_retention(before, after)
    assert half.value == 0.5 and half.low < 0.5 < half.high
    assert bootstrap_retention([False] * 5, [False] * 5) is None


def test_spearman_matches_scipy_and_refuses_tiny_samples():
    from scipy.stats import spearmanr

    x, y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]
    got = spearman(x, y)
    ref = spearmanr(x, y)
    assert got["spearman"] == pytest.approx(ref.statistic) and got["p_value"] == pytest.approx(ref.pvalue)
    assert spearman([1.0, 2.0], [2.0, 1.0])["p_value"] is None


def test_mean_std_uses_the_sample_standard_deviation():
    stats = mean_std([1.0, 2.0, 4.0, None])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(7 / 3)
    assert stats["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))


def test_strict_json_writes_null_for_non_finite_and_a_strict_parser_accepts_it():
    import numpy as np

    value = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": np.float32("nan"), "d": (np.int64(3),)}
    text = strict_dumps(value)
    assert strict_loads(text) == {"a": None, "b": [None, None, 1.5], "c": None, "d": [3]}
    with pytest.raises(ValueError):  # the negative control: Python's default output is not strict JSON
        strict_loads(json.dumps({"a": float("nan")}))


def test_the_interval_over_seeds_is_scipys_t_interval_and_never_pools_items():
    import math

    from scipy import stats as scipy_stats

    from unmemorize.evaluate.intervals import format_over_seeds, over_seeds

    values = [0.0, 0.04, 0.13]  # K-FAC quotes left at three seeds (README)
    got = over_seeds(values)
    low, high = scipy_stats.t.interval(0.95, 2, loc=sum(values) / 3, scale=scipy_stats.sem(values))
    assert math.isclose(got["low"], low, rel_tol=1e-12) and math.isclose(got["high"], high, rel_tol=1e-12)
    assert got["per_seed"] == values and got["n"] == 3
    assert got["low"] < 0 < 0.036  # far wider than the pooled Wilson interval of the items, [3.6, 8.9]%
    assert format_over_seeds(got) == f"5.7 [{100 * low:.1f}, {100 * high:.1f}] (0.0 / 4.0 / 13.0)"
    assert over_seeds([0.5])["low"] is None and over_seeds([0.2, 0.2])["low"] == over_seeds([0.2, 0.2])["high"] == 0.2
    assert over_seeds([0.1, None, 0.3])["n"] == 2


def test_the_paired_test_over_seeds_is_scipys_ttest_rel_and_refuses_what_it_cannot_test():
    import math

    from scipy import stats as scipy_stats

    from unmemorize.evaluate.intervals import paired_over_seeds

    kfac, bsn = [0.0, 0.04, 0.13], [0.97, 0.86, 0.70]
    got = paired_over_seeds(kfac, bsn)
    expected = scipy_stats.ttest_rel(kfac, bsn)
    assert math.isclose(got["p_value"], expected.pvalue, rel_tol=1e-12) and math.isclose(got["t"], expected.statistic, rel_tol=1e-12)
    assert got["n"] == 3 and math.isclose(got["mean_difference"], (0 - 0.97 + 0.04 - 0.86 + 0.13 - 0.70) / 3)
    assert paired_over_seeds([0.1, 0.2], [0.0, 0.1])["p_value"] is None  # every difference the same: nothing to test against
    assert paired_over_seeds([0.1], [0.2])["p_value"] is None
    noisy = paired_over_seeds([0.1, 0.5, 0.2], [0.2, 0.3, 0.25])  # a negative control: inconsistent signs, not shown
    assert noisy["p_value"] > 0.5


def test_a_fractions_interval_over_seeds_is_clipped_to_its_range():
    from unmemorize.evaluate.intervals import over_seeds

    wide = over_seeds([0.0, 0.04, 0.13])
    clipped = over_seeds([0.0, 0.04, 0.13], bounds=(0.0, 1.0))
    assert wide["low"] < 0 and clipped["low"] == 0.0 and clipped["high"] == wide["high"] and clipped["mean"] == wide["mean"]
