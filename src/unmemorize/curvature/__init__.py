"""Curvature: K-FAC factors A = E[a a^T] and G = E[g g^T] per linear module, and their files."""

from .collect import CollectConfig, NextTokenObjective, collect_factors, collect_from_files
from .factors import KFACFactors, load_factors, save_factors

__all__ = [
    "CollectConfig",
    "KFACFactors",
    "NextTokenObjective",
    "collect_factors",
    "collect_from_files",
    "load_factors",
    "save_factors",
]
