"""Choosing which curvature components (i, j) an edit keeps.

Pair mode (the paper's rule). With lambda (G's eigenvalues, m of them) and mu (A's, n), both
sorted descending, component (i, j) has curvature mass lambda_i * mu_j and the total is
(sum lambda)(sum mu). The kept set S is the smallest set of highest-mass pairs with

    sum_{(i,j) in S} lambda_i mu_j  >=  rho * (sum lambda)(sum mu),

ties in lambda_i mu_j broken by row-major order (smaller i first, then smaller j). rho = 1 keeps
every pair (no edit); rho = 0 keeps none.

Because both spectra are sorted, the pairs kept in row i are always a prefix j < k_i: the kept
set is a staircase, stored as ``row_counts`` (m integers) instead of an m x n mask. The cut is
found without touching all m*n products: a binary search over the bit patterns of float64
thresholds t, where for each t the count and mass of {lambda_i mu_j >= t} come from one
``searchsorted`` per row (O(m log n)). That finds the exact cut product t*; pairs equal to t*
are then taken in row-major order until the target is reached. At m = 11008, n = 4096 (45M
pairs) this takes milliseconds, not the seconds of a full sort or the minutes of a heap.

The search evaluates mass(t) about 64 times, so every reduction in it is numpy's own
single-threaded pairwise summation (``np.add.reduce``), never a BLAS call: OpenBLAS threads a
dot product of more than 10,000 elements (lambda of a 7B gate/up projection has 11,008), and on
a machine whose other core is busy each threaded call waits for a time slice, which turned 10-17 ms
into ~1 s (benchmarks/selection_under_load.py). The pairwise sum also rounds the same way whatever
the thread count, so the selection is deterministic across machines.

Per-side mode (the unused ``KFACTreatment`` of the paper's code): keep the top r_G eigenvectors
of G and r_A of A, each the fewest holding a fraction rho of its own trace; S = [r_G] x [r_A].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PairSelection:
    """A staircase of kept pairs: row i keeps columns 0 .. row_counts[i]-1."""

    row_counts: np.ndarray  # (m,) int64, non-increasing
    num_columns: int  # n
    rho: float
    kept_mass: float  # sum of lambda_i mu_j over kept pairs
    total_mass: float  # (sum lambda)(sum mu)

    @property
    def num_rows(self) -> int:
        return len(self.row_counts)

    @property
    def kept_pairs(self) -> int:
        return int(self.row_counts.sum())

    @property
    def total_pairs(self) -> int:
        return self.num_rows * self.num_columns

    @property
    def kept_fraction(self) -> float:
        return self.kept_pairs / self.total_pairs

    @property
    def kept_mass_fraction(self) -> float:
        return self.kept_mass / self.total_mass if self.total_mass > 0 else 1.0

    @property
    def rows_used(self) -> int:
        """Distinct G eigenvectors (output side) with at least one kept pair."""
        return int((self.row_counts > 0).sum())

    @property
    def columns_used(self) -> int:
        """Distinct A eigenvectors (input side) with at least one kept pair."""
        return int(self.row_counts.max()) if self.num_rows else 0

    def mask(self, device=None) -> torch.Tensor:
        """The (m, n) bool mask M of kept pairs."""
        counts = torch.as_tensor(self.row_counts, device=device)
        return torch.arange(self.num_columns, device=device)[None, :] < counts[:, None]


def as_sorted_spectrum(values, name: str) -> np.ndarray:
    """A float64 copy of a 1-D spectrum; errors unless it is non-empty, finite, >= 0 and sorted descending."""
    array = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D spectrum")
    if (array < 0).any() or not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite and non-negative")
    if (np.diff(array) > 0).any():
        raise ValueError(f"{name} must be sorted in descending order")
    return array


def _check_rho(rho: float) -> float:
    if not (0.0 <= rho <= 1.0):  # also rejects NaN
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    return float(rho)


class _Staircase:
    """Counts and masses of {(i, j): lambda_i mu_j >= t} for thresholds t."""

    def __init__(self, lam: np.ndarray, mu: np.ndarray):
        self.lam, self.mu = lam, mu
        self.neg_mu = -mu  # ascending, for searchsorted
        self.prefix_mu = np.concatenate([[0.0], np.cumsum(mu)])
        self.n = len(mu)

    def counts(self, t: float) -> np.ndarray:
        """k_i = #{j : lambda_i * mu_j >= t}, exact in float64 products."""
        lam, mu, n = self.lam, self.mu, self.n
        if t <= 0:
            return np.full(len(lam), n, dtype=np.int64)
        with np.errstate(divide="ignore"):
            guess = np.searchsorted(self.neg_mu, -(t / lam), side="right").astype(np.int64)
        # t / lam rounds; fix the boundary so that it agrees with the rounded products exactly.
        while True:
            up = guess < n
            grow = up.copy()
            grow[up] = lam[up] * mu[guess[up]] >= t
            if not grow.any():
                break
            guess += grow
        while True:
            down = guess > 0
            shrink = down.copy()
            shrink[down] = lam[down] * mu[guess[down] - 1] < t
            if not shrink.any():
                break
            guess -= shrink
        return guess

    def mass(self, counts: np.ndarray) -> float:
        """sum_i lambda_i * (mu_0 + ... + mu_{k_i - 1}); a pairwise sum, not BLAS (see module docstring)."""
        return float(np.add.reduce(self.lam * self.prefix_mu[counts]))


def select_pairs(lam, mu, rho: float) -> PairSelection:
    """The exact curvature-mass pair selection (see module docstring)."""
    lam = as_sorted_spectrum(lam, "lambda (G eigenvalues)")
    mu = as_sorted_spectrum(mu, "mu (A eigenvalues)")
    rho = _check_rho(rho)
    m, n = len(lam), len(mu)
    total = float(lam.sum() * mu.sum())
    stairs = _Staircase(lam, mu)
    if rho >= 1.0:
        return PairSelection(np.full(m, n, np.int64), n, rho, stairs.mass(np.full(m, n, np.int64)), total)
    target = rho * total
    if target <= 0:
        return PairSelection(np.zeros(m, np.int64), n, rho, 0.0, total)
    everything = np.full(m, n, np.int64)
    if stairs.mass(everything) < target:  # only possible through round-off for rho ~ 1
        return PairSelection(everything, n, rho, stairs.mass(everything), total)
    # Binary search over non-negative float64 bit patterns (monotone in value) for
    # t* = the largest t with mass({p >= t}) >= target; t* is itself a product value.
    lo = 0  # bits of 0.0: mass(>= 0) = everything >= target
    hi = int(np.float64(lam[0] * mu[0]).view(np.int64)) + 1  # above the largest product: mass 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if stairs.mass(stairs.counts(float(np.int64(mid).view(np.float64)))) >= target:
            lo = mid
        else:
            hi = mid
    cut = float(np.int64(lo).view(np.float64))
    above = stairs.counts(float(np.int64(lo + 1).view(np.float64)))  # products > cut
    at_or_above = stairs.counts(cut)
    mass_above = stairs.mass(above)
    ties = at_or_above - above  # per row, pairs whose product equals cut
    total_ties = int(ties.sum())
    if cut == 0.0:  # round-off made zero-mass pairs "needed": keep them all
        needed = total_ties
    else:
        needed = int(np.clip(np.ceil((target - mass_above) / cut), 1, total_ties))
        while needed > 1 and mass_above + (needed - 1) * cut >= target:
            needed -= 1
        while needed < total_ties and mass_above + needed * cut < target:
            needed += 1
    # Ties are taken in row-major order: whole rows first, then part of the boundary row.
    before = np.cumsum(ties) - ties
    taken = np.clip(needed - before, 0, ties)
    counts = above + taken
    return PairSelection(counts.astype(np.int64), n, rho, mass_above + needed * cut, total)


def select_per_side(lam, mu, rho: float) -> PairSelection:
    """Keep the top eigenvectors of each factor holding a fraction rho of its own trace."""
    lam = as_sorted_spectrum(lam, "lambda (G eigenvalues)")
    mu = as_sorted_spectrum(mu, "mu (A eigenvalues)")
    rho = _check_rho(rho)
    m, n = len(lam), len(mu)

    def rank(values: np.ndarray) -> int:
        if rho >= 1.0:
            return len(values)
        total = values.sum()
        if rho <= 0 or total <= 0:
            return 0
        return int(np.searchsorted(np.cumsum(values), rho * total, side="left")) + 1

    rows, cols = min(rank(lam), m), min(rank(mu), n)
    counts = np.zeros(m, np.int64)
    counts[:rows] = cols
    return PairSelection(counts, n, rho, float(lam[:rows].sum() * mu[:cols].sum()), float(lam.sum() * mu.sum()))
