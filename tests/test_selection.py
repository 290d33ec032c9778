"""Pair selection: equal to a brute-force sort of all m*n products, minimal, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from unmemorize.edit.selection import select_pairs, select_per_side

RHOS = [0.0, 1e-9, 0.3, 0.9, 1.0]


def brute_force_mask(lam, mu, rho):
    """Sort all products descending (ties: row-major order), take the shortest prefix reaching rho*total."""
    products = np.outer(lam, mu).ravel()
    order = np.argsort(-products, kind="stable")  # stable: equal products keep row-major order
    mask = np.zeros(products.size, bool)
    if rho >= 1:
        return np.ones(products.size, bool)
    target = rho * (lam.sum() * mu.sum())  # the definition: rho times the total mass
    if target <= 0:
        return mask
    count = np.searchsorted(np.cumsum(products[order]), target, side="left") + 1
    mask[order[: min(count, products.size)]] = True
    return mask


def spectra(rng, kind):
    m, n = rng.integers(1, 30, 2)
    if kind == "ties":  # few distinct values: many equal products
        lam, mu = rng.integers(0, 4, m).astype(float), rng.integers(0, 4, n).astype(float)
        lam[0], mu[0] = 3.0, 2.0
    elif kind == "flat":  # every product equal
        lam, mu = np.full(m, 0.5), np.full(n, 2.0)
    else:  # heavy-tailed, like real K-FAC spectra
        lam, mu = rng.exponential(size=m) ** 4, rng.exponential(size=n) ** 4
    return np.sort(lam)[::-1].copy(), np.sort(mu)[::-1].copy()


@pytest.mark.parametrize("kind", ["continuous", "ties", "flat"])
def test_selection_matches_brute_force_sort(kind):
    rng = np.random.default_rng({"continuous": 0, "ties": 1, "flat": 2}[kind])
    for _ in range(60):
        lam, mu = spectra(rng, kind)
        for rho in RHOS + [float(rng.random())]:
            selection = select_pairs(lam, mu, rho)
            np.testing.assert_array_equal(selection.mask().numpy().ravel(), brute_force_mask(lam, mu, rho), err_msg=f"rho={rho}")


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_selection_matches_brute_force_sort_at_7b_row_count(kind):
    """m = 11008 rows (G of a 7B gate/up projection): above the 10,000 elements where OpenBLAS threads a dot."""
    rng = np.random.default_rng({"continuous": 10, "ties": 11}[kind])
    m, n = 11008, 24
    if kind == "ties":
        lam, mu = rng.integers(0, 5, m).astype(float), rng.integers(0, 5, n).astype(float)
    else:
        lam, mu = rng.exponential(size=m) ** 4, rng.exponential(size=n) ** 4
    lam, mu = np.sort(lam)[::-1].copy(), np.sort(mu)[::-1].copy()
    for rho in (0.3, 0.9, 0.99, float(rng.random())):
        selection = select_pairs(lam, mu, rho)
        np.testing.assert_array_equal(selection.mask().numpy().ravel(), brute_force_mask(lam, mu, rho), err_msg=f"rho={rho}")


def test_selection_makes_no_blas_call(monkeypatch):
    """The threshold search reduces with numpy's pairwise sum: a threaded BLAS dot stalls when the other core is busy."""
    def no_blas(*args, **kwargs):
        raise AssertionError("BLAS call inside the pair selection")

    for name in ("dot", "vdot", "inner", "matmul", "tensordot", "einsum"):
        monkeypatch.setattr(np, name, no_blas)
    rng = np.random.default_rng(12)
    lam, mu = np.sort(rng.exponential(size=11008) ** 4)[::-1].copy(), np.sort(rng.exponential(size=64) ** 4)[::-1].copy()
    for rho in (0.5, 0.9, 1.0):
        select_pairs(lam, mu, rho)


def test_kept_mass_reaches_rho_and_is_minimal():
    rng = np.random.default_rng(5)
    for _ in range(50):
        lam, mu = spectra(rng, "continuous")
        total = lam.sum() * mu.sum()
        for rho in (1e-9, 0.3, 0.9, float(rng.random())):
            selection = select_pairs(lam, mu, rho)
            kept = np.outer(lam, mu)[selection.mask().numpy()]
            assert kept.sum() >= rho * total * (1 - 1e-12)
            assert kept.sum() - kept.min() < rho * total  # dropping any kept pair falls short
            assert selection.kept_mass == pytest.approx(kept.sum(), rel=1e-12)


def test_rho_one_keeps_everything_and_rho_zero_nothing():
    lam, mu = np.array([3.0, 1.0, 0.0]), np.array([2.0, 0.5])
    assert select_pairs(lam, mu, 1.0).kept_pairs == 6
    assert select_pairs(lam, mu, 0.0).kept_pairs == 0


def test_invalid_input_is_rejected():
    with pytest.raises(ValueError, match="rho"):
        select_pairs([1.0], [1.0], 1.5)
    with pytest.raises(ValueError, match="rho"):
        select_pairs([1.0], [1.0], float("nan"))
    with pytest.raises(ValueError, match="descending"):
        select_pairs([1.0, 2.0], [1.0], 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        select_pairs([1.0, -1.0], [1.0], 0.5)


def test_kept_set_is_a_staircase_of_prefixes():
    rng = np.random.default_rng(9)
    lam, mu = spectra(rng, "continuous")
    selection = select_pairs(lam, mu, 0.8)
    assert (np.diff(selection.row_counts) <= 0).all()
    assert selection.rows_used == (selection.row_counts > 0).sum()
    assert selection.columns_used == selection.row_counts.max()


def test_per_side_keeps_top_eigenvectors_of_each_factor():
    lam = np.array([5.0, 3.0, 1.0, 1.0])  # cumulative fractions 0.5, 0.8, 0.9, 1.0
    mu = np.array([6.0, 2.0, 2.0])  # 0.6, 0.8, 1.0
    selection = select_per_side(lam, mu, 0.8)
    np.testing.assert_array_equal(selection.row_counts, [2, 2, 0, 0])
    assert selection.kept_mass == pytest.approx(8.0 * 8.0)
    assert select_per_side(lam, mu, 1.0).kept_pairs == 12
