"""The curvature eigenbasis: eigendecompositions of A and G, and their spectra.

    A = U_A diag(mu) U_A^T,   G = U_G diag(lambda) U_G^T,   both sorted descending.

The Kronecker-factored Fisher G (x) A then has eigenvalues lambda_i * mu_j with eigenvectors
u_i (x) v_j; for a weight W (d_out, d_in) the coefficient of component (i, j) is
C_ij = u_i^T W v_j, i.e. C = U_G^T W U_A.

Factors are symmetrized ((X + X^T) / 2) and decomposed with ``torch.linalg.eigh`` in float64 by
default (float32 as an option), on the CPU or an accelerator; round-off negatives are clamped to 0
(their count is kept). Whole factor folders are decomposed by ``decomposition.py``, which also
reads and writes the cache of ``cache.py``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..curvature.factors import KFACFactors
from ..errors import UnmemorizeError
from ..models import check_device


@dataclass
class Eigendecomposition:
    """Eigenvalues (descending, >= 0) and eigenvectors (columns) of one symmetric PSD factor."""

    eigenvalues: torch.Tensor  # (d,)
    eigenvectors: torch.Tensor  # (d, d), column k belongs to eigenvalues[k]
    clamped: int = 0  # how many round-off negatives were set to 0
    fallback: str = ""  # empty, or how eigh was retried after a failure (see ``decompose``)

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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/'cpu' -> CPU; 'auto' -> the first CUDA device if there is one, else CPU; otherwise the
    device must exist here (``models.check_device``)."""
    if device is None or str(device) == "cpu":
        return torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return check_device(str(device))


def decompose(matrix: torch.Tensor, dtype: torch.dtype = torch.float64, device: str | torch.device | None = None) -> Eigendecomposition:
    """Symmetrize, ``eigh`` in ``dtype`` on ``device`` (default: where ``matrix`` is), clamp negatives
    to 0, sort descending. The result is on ``matrix``'s device.

    If eigh fails (cuSOLVER does on some ill-conditioned or low-rank matrices, and any backend can
    fail to converge), it is retried in float64 on the same device, then in float64 on the CPU; the
    first success is returned in ``dtype`` and the retry is said on stderr and recorded in
    ``fallback``. Only when every try fails is an ``UnmemorizeError`` raised."""
    home = matrix.device
    target = resolve_device(device) if device is not None else home
    tries = [(target, dtype)] + [t for t in ((target, torch.float64), (torch.device("cpu"), torch.float64)) if t != (target, dtype)]
    failures = []
    for where, precision in tries:
        sym = matrix.to(device=where, dtype=precision)
        sym = (sym + sym.T) / 2
        try:
            values, vectors = torch.linalg.eigh(sym)  # ascending
        except (RuntimeError, torch.linalg.LinAlgError) as exc:  # LinAlgError is a RuntimeError; cuSOLVER raises plain ones
            failures.append(f"{str(precision).replace('torch.', '')} on {where}: {str(exc).splitlines()[0][:200]}")
            continue
        values, vectors = values.flip(0).to(dtype), vectors.flip(1).to(dtype)
        negative = int((values < 0).sum())
        fallback = ""
        if failures:
            fallback = f"eigh failed ({'; '.join(failures)}); computed in {str(precision).replace('torch.', '')} on {where}"
            print(f"unmemorize: note: a {tuple(matrix.shape)} matrix: {fallback}", file=sys.stderr)
        return Eigendecomposition(values.clamp_min(0).to(home), vectors.to(home), negative, fallback)
    raise UnmemorizeError(f"eigh of a {tuple(matrix.shape)} matrix failed every way it was tried: {'; '.join(failures)}")


@dataclass
class ModuleBasis:
    """The two eigendecompositions of one module: G (output side) and A (input side)."""

    gradient: Eigendecomposition  # lambda, U_G
    activation: Eigendecomposition  # mu, U_A


def activation_owner(factors: KFACFactors, name: str) -> str:
    """The module whose A ``name`` shares (modules reading the same input, e.g. q/k/v), or ``name``."""
    owner = factors.metadata.get("shared_activation", {}).get(name, name)
    return owner if owner in factors.activation else name
