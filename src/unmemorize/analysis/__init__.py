"""Seeing the spectrum: how memorized, task and clean inputs load on curvature bands (paper Figures 2 and 4)."""

from .bands import BAND_NAMES, BASES, Readout, build_readout, pairs_readout, rank_correlation, separation_score, svd_readout, whitened_readout
from .job import AnalyzeJob, run_analyze_job
from .inputs import TokenSequence, image_batches, load_image_source, load_text_source, task_sequence, text_batches
from .run import (
    AnalyzeConfig, add_comparison, auc, band_analysis, retention_correlation, separation_mean, sequence_loading, summarize, task_loading,
    task_loading_counts,
)

__all__ = [
    "BAND_NAMES", "BASES", "Readout", "build_readout", "pairs_readout", "rank_correlation", "separation_score", "svd_readout",
    "whitened_readout", "TokenSequence", "image_batches", "load_image_source", "load_text_source", "task_sequence", "text_batches",
    "AnalyzeConfig", "add_comparison", "auc", "band_analysis", "retention_correlation", "separation_mean", "sequence_loading",
    "summarize", "task_loading", "task_loading_counts", "AnalyzeJob", "run_analyze_job",
]
