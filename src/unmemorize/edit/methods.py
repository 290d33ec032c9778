"""Weight edits on one (d_out, d_in) matrix W. Pure functions: no model, no files.

* K-FAC (the paper): C = U_G^T W U_A, keep the selected pairs, W' = U_G (C * M) U_A^T.
* Random control: the same formula with as many pairs kept as the K-FAC selection, but chosen
  uniformly at random; shows that the curvature order, not the amount removed, matters. Each
  module draws its own mask, seeded by ``module_seed(seed, module name)``.
* SVD baseline: W = U S V^T, drop the smallest singular values, either keeping a fraction of the
  energy sum(s^2) or pruning a fraction of the singular values.

All are computed in ``compute_dtype`` (float64 by default) and returned in that dtype; the
caller casts back to the module's dtype. Biases are never touched.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..basis import ModuleBasis
from .selection import PairSelection


def project_pairs(weight: torch.Tensor, basis: ModuleBasis, mask: torch.Tensor, compute_dtype=torch.float64) -> torch.Tensor:
    """W' = U_G ((U_G^T W U_A) * M) U_A^T with M an (m, n) bool mask of kept pairs."""
    u_g = basis.gradient.eigenvectors.to(device=weight.device, dtype=compute_dtype)  # (d_out, d_out)
    u_a = basis.activation.eigenvectors.to(device=weight.device, dtype=compute_dtype)  # (d_in, d_in)
    coefficients = u_g.T @ weight.to(compute_dtype) @ u_a  # C, (d_out, d_in)
    coefficients = coefficients * mask.to(weight.device)
    return u_g @ coefficients @ u_a.T


def kfac_edit(weight: torch.Tensor, basis: ModuleBasis, selection: PairSelection, compute_dtype=torch.float64) -> torch.Tensor:
    """The curvature edit: keep the pairs in ``selection``; W itself when every pair is kept."""
    if selection.kept_pairs == selection.total_pairs:
        return weight.to(compute_dtype).clone()
    return project_pairs(weight, basis, selection.mask(weight.device), compute_dtype)


def module_seed(seed: int, name: str) -> int:
    """The random control's seed for one module: the first 8 hex digits of sha256("{seed}:{name}").

    Stable across processes and Python versions (unlike ``hash``), and different per module, so
    two modules of the same shape (gate and up) do not get the same mask.
    """
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16)


def random_pairs_mask(num_rows: int, num_columns: int, kept: int, seed: int) -> torch.Tensor:
    """An (m, n) bool mask with ``kept`` pairs chosen uniformly at random (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_rows * num_columns, generator=generator)
    mask = torch.zeros(num_rows * num_columns, dtype=torch.bool)
    mask[order[:kept]] = True
    return mask.view(num_rows, num_columns)


def random_edit(weight: torch.Tensor, basis: ModuleBasis, kept_pairs: int, seed: int, compute_dtype=torch.float64) -> torch.Tensor:
    m, n = weight.shape
    if kept_pairs >= m * n:
        return weight.to(compute_dtype).clone()
    return project_pairs(weight, basis, random_pairs_mask(m, n, kept_pairs, seed), compute_dtype)


def svd_rank(singular_values: torch.Tensor, keep_energy: float | None = None, prune_ratio: float | None = None) -> int:
    """How many leading singular values to keep.

    ``keep_energy``: the fewest holding that fraction of sum(s^2) (1.0 keeps all).
    ``prune_ratio``: drop round(ratio * r) of the r singular values (the paper's "prune 0.5%").
    """
    r = len(singular_values)
    if (keep_energy is None) == (prune_ratio is None):
        raise ValueError("give exactly one of keep_energy and prune_ratio")
    if prune_ratio is not None:
        return r - int(round(prune_ratio * r))
    if keep_energy >= 1.0:
        return r
    energy = (singular_values.double() ** 2).cpu().numpy()
    if keep_energy <= 0 or energy.sum() == 0:
        return 0
    return min(r, int(np.searchsorted(np.cumsum(energy), keep_energy * energy.sum(), side="left")) + 1)


def svd_edit(weight: torch.Tensor, keep_energy: float | None = None, prune_ratio: float | None = None, compute_dtype=torch.float64):
    """Truncated SVD of W. Returns (W', kept rank, total rank)."""
    u, s, vh = torch.linalg.svd(weight.to(compute_dtype), full_matrices=False)
    rank = svd_rank(s, keep_energy, prune_ratio)
    if rank == len(s):
        return weight.to(compute_dtype).clone(), rank, len(s)
    return (u[:, :rank] * s[:rank]) @ vh[:rank], rank, len(s)
