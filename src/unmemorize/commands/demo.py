"""``unmemorize demo``: the paper's experiment on the built-in testbed (``testbed/demo.py``)."""

from __future__ import annotations

import argparse

from .options import add_config_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize demo``."""
    from ..testbed.demo import DemoConfig

    demo = subparsers.add_parser("demo", help="The paper's experiment on the built-in testbed; writes report.md.",
                                 description="Train (or load) the testbed, collect factors, sweep plans on the tuning split, "
                                 "edit, evaluate baseline / K-FAC / SVD / random, write report.md, results.json and plots.")
    add_config_options(demo, DemoConfig)
    return demo


def run(args) -> None:
    from ..testbed.demo import DemoConfig, run_demo

    config = config_from_args(DemoConfig, args)
    config.validate()
    run_demo(config)
