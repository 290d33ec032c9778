"""Basis: the curvature eigenbasis of each module, from its K-FAC factors.

    A = U_A diag(mu) U_A^T,   G = U_G diag(lambda) U_G^T    (eigh, sorted descending)

    eigen.py          one factor's eigendecomposition; a module's pair of them (``ModuleBasis``)
    decomposition.py  every module of a factor folder: in memory (``decompose_factors``) or once,
                      stored beside the factors, over torchrun ranks (``decompose_to_cache``,
                      the work of ``unmemorize decompose``)
    cache.py          the stored format (``<factors>/eigen-<dtype>/``), checked by fingerprint
    spectrum.py       the spectrum view: effective ranks, mass ranks, kept pairs per rho, the plot
                      (``unmemorize spectrum``)
"""

from .decomposition import DecomposeConfig, decompose_factors, decompose_to_cache
from .eigen import Eigendecomposition, ModuleBasis, activation_owner, decompose, resolve_device

__all__ = ["DecomposeConfig", "Eigendecomposition", "ModuleBasis", "activation_owner", "decompose", "decompose_factors",
           "decompose_to_cache", "resolve_device"]
