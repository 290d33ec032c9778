"""``unmemorize unlearn bsn``: BalancedSubnet from the command line (parse, call the library, print).

    unmemorize unlearn bsn --model M --forget FILE --retain FILE --out DIR [--ratio R] [--alpha A]
                           [--epochs E] [--lr LR] [--batch-size B] [--seed S] [--layers ..] [--proj ..]

Options come from ``BSNConfig``; bad input stops before any work with one ``unmemorize: error:``
line (exit status 2) and leaves no output folder.
"""

from __future__ import annotations

import argparse

from .options import add_config_options, add_model_options, add_target_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize unlearn <method>``."""
    from ..baselines.bsn import BSNConfig

    unlearn = subparsers.add_parser("unlearn", help="Supervised unlearning baselines (needs a forget set): bsn.",
                                    description="Baselines that learn from a forget set, for comparison with the "
                                    "unsupervised K-FAC edit.")
    methods = unlearn.add_subparsers(dest="method", required=True)
    bsn = methods.add_parser(
        "bsn", help="BalancedSubnet (Sakarvadia et al., ICLR 2025): learned masks over the MLP weights.",
        description="Learn a score per weight of the chosen MLP matrices (default: every block's MLP projections), zero "
        "the --ratio fraction with the smallest |score| per matrix (straight-through gradient, weights frozen), minimising "
        "-(1-alpha)*CE(forget) + alpha*CE(retain) on batches that all hold forget examples, with SGD + momentum over the "
        "scores; then apply the mask permanently and save a Hugging Face model folder with unmemorize_edit.json.")
    add_model_options(bsn)
    bsn.add_argument("--forget", required=True, help="Sequences to forget: memorization .jsonl (prefix_ids/suffix_ids or "
                     "prefix/suffix rows, each used whole) or documents (.txt a document per line, .jsonl text/input_ids, ...). "
                     "Use the tuning split only, never the sequences you evaluate on.")
    bsn.add_argument("--retain", required=True, help="Sequences to keep: documents (.txt, .jsonl, ...) cut into --seq-len "
                     "windows, or memorization .jsonl rows.")
    bsn.add_argument("--out", required=True, help="Model folder to write.")
    bsn.add_argument("--overwrite", action="store_true", help="Replace an existing output folder (only one unmemorize wrote).")
    add_target_options(bsn)
    add_config_options(bsn, BSNConfig)
    return unlearn


def run(args) -> None:
    """The ``unlearn`` command: only ``bsn`` for now."""
    if args.method == "bsn":
        _run_bsn(args)


def _run_bsn(args) -> None:
    from ..data import pad_token_id
    from ..models import load_model, model_limits
    from ..paths import command_output
    from ..targets import resolve_targets
    from ..baselines.bsn import BSNConfig, balanced_subnet, save_bsn_model
    from ..baselines.sequences import load_token_set

    config = config_from_args(BSNConfig, args)
    config.validate()
    inputs = {"--model": args.model, "--forget": args.forget, "--retain": args.retain}
    with command_output(args.out, args.overwrite, inputs) as out:
        model, tokenizer = load_model(args.model, args.model_dtype, args.device, args.trust_remote_code)
        vocab, positions = model_limits(model)
        targets = resolve_targets(model, args.targets, args.layers, args.proj)
        forget = load_token_set(args.forget, tokenizer, config.seq_len, None, vocab, positions, option="--forget")
        retain = load_token_set(args.retain, tokenizer, config.seq_len, config.retain_tokens, vocab, positions, option="--retain")
        model, record = balanced_subnet(model, forget, retain, config, targets, pad_id=pad_token_id(tokenizer))
        extra = {"model": args.model, "targets": {"globs": args.targets, "layers": args.layers, "proj": args.proj}}
        save_bsn_model(model, out, tokenizer, record, overwrite=args.overwrite, extra=extra)
    for name, stats in record.modules.items():
        print(f"{name}: removed {stats.removed}/{stats.numel} ({stats.removed_fraction:.4f})")
    last = record.history[-1]
    print(f"bsn: {record.steps} steps in {record.wall_seconds:.1f} s; last batch forget CE {last['forget_ce']:.3f}, "
          f"retain CE {last['retain_ce']:.3f}")
    print(f"wrote {args.out}")
