"""The curvature eigenbasis: eigendecompositions of A and G, and their spectra.

    A = U_A diag(mu) U_A^T,   G = U_G diag(lambda) U_G^T,   both sorted descending.

The Kronecker-factored Fisher G (x) A then has eigenvalues lambda_i * mu_j with eigenvectors
u_i (x) v_j; for a weight W (d_out, d_in) the coefficient of component (i, j) is
C_ij = u_i^T W v_j, i.e. C = U_G^T W U_A.

Factors are symmetrized ((X + X^T) / 2) and decomposed with ``torch.linalg.eigh`` in float64 by
default; round-off negatives are clamped to 0 (their count is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .curvature.factors import KFACFactors


@dataclass
class Eigendecomposition:
    """Eigenvalues (descending, >= 0) and eigenvectors (columns) of one symmetric PSD factor."""

    eigenvalues: torch.Tensor  # (d,)
    eigenvectors: torch.Tensor  # (d, d), column k belongs to eigenvalues[k]
    clamped: int = 0  # how many round-off negatives were set to 0

    @property
    def effective_rank(self) -> float:
        """Participation ratio (sum mu)^2 / sum mu^2: 1 for one direction, d for a flat spectrum."""
        total = self.eigenvalues.sum()
        squares = (self.eigenvalues**2).sum()
        return float(total**2 / squares) if squares > 0 else 0.0

    def rank_for_mass(self, fraction: float) -> int:
        """Fewest leading eigenvalues holding ``fraction`` of the trace."""
        total = float(self.eigenvalues.sum())
        if total <= 0 or fraction <= 0:
            return 0
        cumulative = torch.cumsum(self.eigenvalues, 0) / total
        return int(torch.searchsorted(cumulative, torch.tensor(min(fraction, 1.0), dtype=cumulative.dtype)).item()) + 1


def decompose(matrix: torch.Tensor, dtype: torch.dtype = torch.float64) -> Eigendecomposition:
    """Symmetrize, ``eigh`` in ``dtype``, clamp negatives to 0, sort descending."""
    sym = matrix.to(dtype)
    sym = (sym + sym.T) / 2
    values, vectors = torch.linalg.eigh(sym)  # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    negative = values < 0
    return Eigendecomposition(values.clamp_min(0), vectors, int(negative.sum()))


@dataclass
class ModuleBasis:
    """The two eigendecompositions of one module: G (output side) and A (input side)."""

    gradient: Eigendecomposition  # lambda, U_G
    activation: Eigendecomposition  # mu, U_A


def decompose_factors(factors: KFACFactors, dtype: torch.dtype = torch.float64, modules: list[str] | None = None) -> dict[str, ModuleBasis]:
    """Eigendecompose A and G of every (or the chosen) module; shared A is decomposed once."""
    names = modules or factors.modules
    shared = factors.metadata.get("shared_activation", {})
    bases: dict[str, ModuleBasis] = {}
    done: dict[str, Eigendecomposition] = {}
    for name in names:
        owner = shared.get(name, name)
        owner = owner if owner in factors.activation else name
        if owner not in done:
            done[owner] = decompose(factors.activation[owner], dtype)
        bases[name] = ModuleBasis(gradient=decompose(factors.gradient[name], dtype), activation=done[owner])
    return bases
