"""``unmemorize compare``: K-FAC vs SVD vs BalancedSubnet on the testbed, with the stress test, nDCG and
attacks (``testbed/compare.py``)."""

from __future__ import annotations

import argparse

from .options import add_config_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize compare``."""
    from ..testbed.compare import CompareConfig

    compare = subparsers.add_parser("compare", help="K-FAC vs SVD vs BalancedSubnet on the testbed, with stress test, nDCG and attacks.",
                                    description="Per seed: sweep K-FAC (layers x rho), SVD (layers x energy) and BSN (ratio x alpha x "
                                    "epochs), choose each by the same rule on the tuning split, then evaluate the chosen edits: "
                                    "memorization, perplexity, tasks, stress test, nDCG@10, relearning, sampled extraction, bf16. "
                                    "Writes report.md, results.json and pareto.png.")
    add_config_options(compare, CompareConfig)
    return compare


def run(args) -> None:
    from ..testbed.compare import CompareConfig, run_comparison

    config = config_from_args(CompareConfig, args)
    config.validate()
    run_comparison(config)
