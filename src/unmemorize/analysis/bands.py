"""Curvature bands of a layer's input space, and how strongly hidden states load on them.

The paper's Figure 2 projects a layer's inputs x on a curvature-ordered basis, groups the basis
vectors in percentile bands (top 10%, 10-25%, 25-50%, bottom 50%) and compares the mean band
activation of memorized and of clean inputs. Here a basis is a *read-out*: rows r_k (unit
norm, ordered from high to low curvature) and, per band b, weights w_bk summing to 1. The band
activation of one input is the weighted RMS read-out

    a_b(x) = sqrt( sum_k w_bk (r_k . x)^2 ),

and the band ratio of a source S against the clean reference is mean_{x in S} a_b(x) /
mean_{x in clean} a_b(x). Bases (all computed in float64):

* ``svd`` -- the thin SVD W = U S V^T: r_k = v_k ordered by singular value, uniform weights over
  the k's of each band (the paper's "SVD activation" V^T x). There are min(d_out, d_in) rows: for
  a wide input (a down-projection, d_in > d_out) the bands cover W's row space and the input
  directions W ignores belong to no band (any basis of that null space would be arbitrary, and
  bands cutting through it would depend on it).
* ``whitened`` (default K-FAC basis) -- the SVD of the Fisher-whitened weight
  M = G^{1/2} W A^{1/2} = P S Q^T. Then W = sum_k s_k G^{-1/2} p_k q_k^T A^{-1/2}: rank-one
  components that are orthogonal in the K-FAC metric, and s_k^2 = vec(W_k)^T (A (x) G) vec(W_k)
  is the curvature-weighted energy of component k (the second-order loss cost of deleting it).
  Component k reads its input through q_k^T A^{-1/2}, so r_k = A^{-1/2} q_k / |A^{-1/2} q_k|,
  ordered by s_k, uniform weights; min(d_out, d_in) components, as for ``svd``. With A = I and
  G = I this IS the ``svd`` basis; with G = I and W = I it is A's eigenbasis ordered by mu.
  A^{-1/2} uses mu clamped below at ``floor * mu_max`` (directions clean inputs never visit stay
  finite). Components with equal s_k (e.g. s_k = 0 when G is rank-deficient) come in LAPACK's order.
* ``pairs`` (the paper's literal reading) -- r_j = the eigenvectors of A (u_Aj), and band b holds
  the (i, j) pairs whose curvature lambda_i mu_j ranks in b's percentile range among all
  d_out * d_in pairs. The Fisher eigenvector u_Gi u_Aj^T maps x to u_Gi (u_Aj . x), whose norm is
  |u_Aj . x|, so the band's mean squared read-out weights A-eigenvector j by the share of band b's
  pairs that use it: w_bj = #{i : (i, j) in b} / |b|. Ties in lambda*mu are taken in row-major
  order, as the edit's selection does.

Separation score of a layer: ln(ratio_bottom50) - ln(ratio_top10); 0 means the source loads on
high- and low-curvature bands as clean text does, > 0 means it leans on low curvature, +inf that
its top-10% ratio is exactly 0 (see ``separation_score``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..basis import ModuleBasis
from ..edit.selection import as_sorted_spectrum

BAND_EDGES = (0.0, 0.10, 0.25, 0.50, 1.0)
BAND_NAMES = ("top10", "10-25", "25-50", "bottom50")
BASES = ("whitened", "pairs", "svd")
DEFAULT_FLOOR = 1e-7


@dataclass
class Readout:
    """A curvature-ordered read-out of d_in-dimensional inputs, grouped in bands."""

    directions: torch.Tensor  # (k, d_in) float64, unit rows, high curvature first
    band_weights: torch.Tensor  # (bands, k) float64, each row sums to 1 (all-zero row: empty band)
    scores: torch.Tensor  # (k,) the ordering score (singular values, s_k, or mu)
    kind: str

    def band_activations(self, inputs: torch.Tensor) -> torch.Tensor:
        """a_b(x) for each row x of ``inputs`` (N, d_in) -> (N, bands), in the read-out's dtype."""
        projected = inputs.to(self.directions.dtype) @ self.directions.T
        return (projected.square() @ self.band_weights.T).clamp_min(0).sqrt()


def _uniform_band_weights(count: int, edges=BAND_EDGES) -> torch.Tensor:
    """Band b holds indices [round(e_b * k), round(e_{b+1} * k)), equally weighted."""
    weights = torch.zeros(len(edges) - 1, count, dtype=torch.float64)
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        start, stop = round(lo * count), round(hi * count)
        if stop > start:
            weights[b, start:stop] = 1.0 / (stop - start)
    return weights


def svd_readout(weight: torch.Tensor, edges=BAND_EDGES) -> Readout:
    """Right singular vectors of W (thin SVD: min(d_out, d_in) rows) ordered by singular value."""
    w = weight.detach().to(torch.float64).cpu()
    _, singular, vh = torch.linalg.svd(w, full_matrices=False)
    return Readout(vh, _uniform_band_weights(len(singular), edges), singular, "svd")


def whitened_readout(weight: torch.Tensor, basis: ModuleBasis, edges=BAND_EDGES, floor: float = DEFAULT_FLOOR) -> Readout:
    """Read-out rows A^{-1/2} q_k of the SVD of G^{1/2} W A^{1/2}, ordered by s_k (see module doc).

    Computed in the eigenbasis: M' = diag(sqrt lambda) (U_G^T W U_A) diag(sqrt mu) has the same
    singular values as M and right singular vectors q'_k = U_A^T q_k, so
    A^{-1/2} q_k = U_A (q'_k / sqrt(mu)).
    """
    w = weight.detach().to(torch.float64).cpu()
    u_g, lam = basis.gradient.eigenvectors.to(torch.float64).cpu(), basis.gradient.eigenvalues.to(torch.float64).cpu()
    u_a, mu = basis.activation.eigenvectors.to(torch.float64).cpu(), basis.activation.eigenvalues.to(torch.float64).cpu()
    whitened = lam.sqrt()[:, None] * (u_g.T @ w @ u_a) * mu.sqrt()[None, :]
    _, singular, vh = torch.linalg.svd(whitened, full_matrices=False)
    mu_safe = mu.clamp_min(floor * float(mu.max()) if float(mu.max()) > 0 else 1.0)
    directions = (vh / mu_safe.sqrt()[None, :]) @ u_a.T
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return Readout(directions, _uniform_band_weights(len(singular), edges), singular, "whitened")


def top_pair_column_counts(lam: torch.Tensor, mu: torch.Tensor, count: int) -> np.ndarray:
    """How many of the ``count`` highest-curvature pairs (i, j) use each column j.

    Pairs are ranked by lambda_i * mu_j descending, ties in row-major order (smaller i, then
    smaller j). With both spectra sorted descending the top set is a staircase, so each row keeps
    a prefix of columns; the cut value is found with one partition over all products.
    """
    lam, mu = as_sorted_spectrum(lam, "lambda (G eigenvalues)"), as_sorted_spectrum(mu, "mu (A eigenvalues)")
    m, n = len(lam), len(mu)
    if count <= 0:
        return np.zeros(n, np.int64)
    if count >= m * n:
        return np.full(n, m, np.int64)
    products = np.multiply.outer(lam, mu)
    cut = np.partition(products.ravel(), m * n - count)[m * n - count]  # the count-th largest value
    above = (products > cut).sum(axis=1)
    ties = (products == cut).sum(axis=1)
    needed = count - int(above.sum())
    take = np.minimum(ties, np.maximum(0, needed - np.concatenate([[0], np.cumsum(ties)[:-1]])))
    row_counts = above + take  # a prefix of each row: products are sorted along rows
    return (np.arange(n)[None, :] < row_counts[:, None]).sum(axis=0).astype(np.int64)


def pairs_readout(basis: ModuleBasis, edges=BAND_EDGES) -> Readout:
    """A's eigenvectors, band weights from the lambda*mu rank of all (i, j) pairs (see module doc)."""
    lam, mu = basis.gradient.eigenvalues, basis.activation.eigenvalues
    total = len(lam) * len(mu)
    cumulative = [top_pair_column_counts(lam, mu, round(edge * total)) for edge in edges]
    weights = torch.zeros(len(edges) - 1, len(mu), dtype=torch.float64)
    for b in range(len(edges) - 1):
        counts = torch.as_tensor(cumulative[b + 1] - cumulative[b], dtype=torch.float64)
        if counts.sum() > 0:
            weights[b] = counts / counts.sum()
    return Readout(basis.activation.eigenvectors.to(torch.float64).cpu().T.contiguous(), weights,
                   basis.activation.eigenvalues.to(torch.float64).cpu(), "pairs")


def build_readout(kind: str, weight: torch.Tensor, basis: ModuleBasis | None, edges=BAND_EDGES, floor: float = DEFAULT_FLOOR) -> Readout:
    if kind == "svd":
        return svd_readout(weight, edges)
    if basis is None:
        raise ValueError(f"the {kind!r} basis needs K-FAC factors")
    if kind == "whitened":
        return whitened_readout(weight, basis, edges, floor)
    if kind == "pairs":
        return pairs_readout(basis, edges)
    raise ValueError(f"unknown basis {kind!r}; choose from {BASES}")


class BandMeans:
    """Running mean of a_b(x) over inputs (streamed: no hidden state is kept)."""

    def __init__(self, bands: int):
        self.total = torch.zeros(bands, dtype=torch.float64)
        self.count = 0

    def update(self, activations: torch.Tensor) -> None:
        self.total += activations.sum(0).cpu()
        self.count += activations.shape[0]

    @property
    def mean(self) -> list[float]:
        return (self.total / self.count).tolist() if self.count else [float("nan")] * len(self.total)


def band_ratios(source: list[float], reference: list[float]) -> list[float]:
    """mean a_b over the source / mean a_b over the reference, per band (nan where undefined)."""
    return [s / r if r > 0 and np.isfinite(s) else float("nan") for s, r in zip(source, reference)]


def separation_score(ratios: list[float]) -> float:
    """ln(ratio of the bottom-50% band) - ln(ratio of the top-10% band).

    A ratio of exactly 0 is a measurement, not a gap: a top-10% ratio of 0 with a positive
    bottom-50% ratio is the strongest possible lean on low curvature, +inf (and the mirror case
    -inf). The score is NaN (undefined) only when a ratio is NaN (the reference's band mean is 0,
    or the source had no counted position) or both ratios are 0 (0/0).
    """
    top, bottom = float(ratios[0]), float(ratios[-1])
    if np.isnan(top) or np.isnan(bottom) or (top == 0 and bottom == 0):
        return float("nan")
    if top == 0:
        return float("inf")
    if bottom == 0:
        return float("-inf")
    return float(np.log(bottom) - np.log(top))


def rank_correlation(x, y) -> float:
    """Spearman's rho: Pearson correlation of the ranks (ties get their average rank)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y) or len(x) < 2:
        return float("nan")

    def ranks(values):
        order = np.argsort(values, kind="stable")
        ranked = np.empty(len(values))
        sorted_values = values[order]
        start = 0
        while start < len(values):
            stop = start
            while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
                stop += 1
            ranked[order[start: stop + 1]] = (start + stop) / 2 + 1
            start = stop + 1
        return ranked

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")
