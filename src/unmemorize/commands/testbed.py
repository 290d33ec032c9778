"""``unmemorize testbed train|info``: train (or reuse) the built-in testbed, or print where it is (``testbed/``)."""

from __future__ import annotations

import argparse
import json

from ..errors import UnmemorizeError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize testbed``."""
    testbed = subparsers.add_parser("testbed", help="Train or inspect the built-in testbed.",
                                    description="The testbed: a Llama-style model trained on a generated world with known "
                                    "memorized sequences and skills; cached by a hash of the code version and configs.")
    testbed.add_argument("action", choices=["train", "info"], help="train: train (or reuse) it; info: print its folder and summary.")
    testbed.add_argument("--quick", action="store_true", help="The tiny variant (seconds).")
    testbed.add_argument("--seed", type=int, default=0, help="World and training seed (default: 0).")
    testbed.add_argument("--retrain", action="store_true", help="Train from scratch even if the cache or the package (the "
                         "shipped testbeds of seeds 0-2) has it.")
    return testbed


def run(args) -> None:
    from ..errors import check_seed
    from ..testbed import TrainConfig, WorldConfig, load_or_train, quick_configs, testbed_dir

    check_seed(args.seed)
    world, train = quick_configs(args.seed) if args.quick else (WorldConfig(seed=args.seed), TrainConfig(seed=args.seed))
    folder = testbed_dir(world, train)
    if args.action == "train":
        load_or_train(world, train, retrain=args.retrain)
    if not (folder / "testbed.json").is_file():
        raise UnmemorizeError(f"no trained testbed at {folder}; run 'unmemorize testbed train'")
    info = json.loads((folder / "testbed.json").read_text())
    print(f"{folder}\n{info.get('source', 'trained here')}\nkey {info['key']}: {info['parameters']:,} parameters, {info['tokens']:,} tokens, {info['steps']} steps, "
          f"{info['seconds']:.0f} s, final loss {info['loss_curve'][-1]['loss_ema'] if info['loss_curve'] else '?'}")
