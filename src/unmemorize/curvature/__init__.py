"""Curvature: K-FAC factors A = E[a a^T] and G = E[g g^T] per linear module, and their files."""

from .collect import CollectConfig, collect_factors, collect_from_files
from .objectives import ImageClassificationObjective, NextTokenObjective
from .factors import KFACFactors, ShardedFactorWriter, load_factors, save_factors

__all__ = [
    "CollectConfig",
    "ImageClassificationObjective",
    "KFACFactors",
    "NextTokenObjective",
    "ShardedFactorWriter",
    "collect_factors",
    "collect_from_files",
    "load_factors",
    "save_factors",
]
