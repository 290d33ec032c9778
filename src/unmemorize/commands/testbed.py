"""``unmemorize testbed train|info``: train (or reuse) a built-in testbed, or print where it is (``testbed/``).

``--world generated`` (default) is the generated world of ``testbed/world.py``; ``--world quotes`` the real-text
world of ``testbed/quotes/`` (real prose with real quotes inserted 1-64 times), which trains two models: the
model and its twin retrained without any quote.
"""

from __future__ import annotations

import argparse
import json

from ..errors import UnmemorizeError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize testbed``."""
    testbed = subparsers.add_parser("testbed", help="Train or inspect the built-in testbeds.",
                                    description="The testbeds: Llama-style models trained on a generated world (known memorized "
                                    "sequences and skills) or on real prose with real quotes; cached by a hash of the code version, "
                                    "configs and data.")
    testbed.add_argument("action", choices=["train", "info"], help="train: train (or reuse) it; info: print its folder and summary.")
    testbed.add_argument("--world", choices=["generated", "quotes"], default="generated",
                         help="generated: the generated world (default); quotes: real prose and real quotes (Debian's bible-kjv, "
                         "jargon-text, dict-devil and fortunes, or --corpus / --quotes).")
    testbed.add_argument("--quick", action="store_true", help="The tiny variant (seconds).")
    testbed.add_argument("--seed", type=int, default=0, help="World and training seed (default: 0).")
    testbed.add_argument("--retrain", action="store_true", help="Train from scratch even if the cache or the package (the "
                         "shipped testbeds of seeds 0-2) has it.")
    testbed.add_argument("--size", choices=["cpu", "gpu"], default="cpu", help="--world quotes: 'cpu' (3.3M parameters, about "
                         "10 min a model on 2 cores) or 'gpu' (85M parameters, 4 passes).")
    testbed.add_argument("--corpus", default="", help="--world quotes: a folder of .txt prose instead of Debian's texts.")
    testbed.add_argument("--quotes", default="", help="--world quotes: a .jsonl of {'body', 'author'} quotes instead of fortunes.")
    return testbed


def _summary(folder, info: dict) -> str:
    return (f"{folder}\n{info.get('source', info.get('variant', 'trained here'))}\nkey {info['key']}: {info['parameters']:,} parameters, "
            f"{info['tokens']:,} tokens, {info['steps']} steps, {info['seconds']:.0f} s, final loss "
            f"{info['loss_curve'][-1]['loss_ema'] if info['loss_curve'] else '?'}")


def run(args) -> None:
    from ..errors import check_seed

    check_seed(args.seed)
    if args.world == "quotes":
        return _run_quotes(args)
    if args.corpus or args.quotes or args.size != "cpu":
        raise UnmemorizeError("--corpus, --quotes and --size belong to --world quotes")
    from ..testbed import TrainConfig, WorldConfig, load_or_train, quick_configs, testbed_dir

    world, train = quick_configs(args.seed) if args.quick else (WorldConfig(seed=args.seed), TrainConfig(seed=args.seed))
    folder = testbed_dir(world, train)
    if args.action == "train":
        load_or_train(world, train, retrain=args.retrain)
    if not (folder / "testbed.json").is_file():
        raise UnmemorizeError(f"no trained testbed at {folder}; run 'unmemorize testbed train'")
    print(_summary(folder, json.loads((folder / "testbed.json").read_text())))


def _run_quotes(args) -> None:
    from ..provenance import command_line
    from ..testbed.quotes import build_quotes_world, load_or_train_quotes, quotes_configs, quotes_dir

    world_config, train = quotes_configs(args.seed, "quick" if args.quick else args.size, args.corpus, args.quotes)
    world = build_quotes_world(world_config)
    for with_quotes in (True, False):
        folder = quotes_dir(world, train, with_quotes)
        if args.action == "train":
            load_or_train_quotes(world_config, train, with_quotes, retrain=args.retrain, world=world, command=command_line())
        if not (folder / "testbed.json").is_file():
            raise UnmemorizeError(f"no trained quotes testbed at {folder}; run 'unmemorize testbed train --world quotes'")
        print(_summary(folder, json.loads((folder / "testbed.json").read_text())))
