"""The ``unmemorize`` command: thin wrappers over the library, options generated from the configs.

    unmemorize collect  --model M --data PATH --out DIR [--targets GLOB]... [--fisher true|empirical] ...
    unmemorize edit     --model M --factors DIR --out DIR (--rho X | --plan FILE) [--method kfac|svd|random] ...
    unmemorize spectrum --factors DIR [--out PNG] [--rhos 0.9,0.99]
    unmemorize demo     [--out DIR]

Errors in the input print one line, ``unmemorize: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from .errors import UnmemorizeError


def _add_config_options(parser: argparse.ArgumentParser, config_cls, skip=()) -> None:
    """One ``--option`` per dataclass field, with its help text, type, choices and default."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        origin = typing.get_origin(hint)
        if origin is typing.Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(hint), default=f.default, help=help_text)
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kind = args[0] if args else hint
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text)


def _config_from_args(config_cls, args: argparse.Namespace):
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)})


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Local model folder or Hugging Face hub id.")
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                        help="dtype the model is loaded in (default: float32).")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu).")
    parser.add_argument("--trust-remote-code", action="store_true", help="Allow the model's own Python code to run (off by default).")


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", action="append", metavar="GLOB",
                        help="Glob over module names (repeatable), e.g. 'model.layers.2?.mlp.*_proj'.")
    parser.add_argument("--layers", help="Block indices for the architecture preset, e.g. '23,24,25' or '0-3'.")
    parser.add_argument("--proj", help="Projections for the preset, e.g. 'gate,up' (Llama/OLMo), 'fc,proj' (GPT-2), "
                        "'fc1,fc2' (ViT); attention: 'q,k,v,o' or 'qkv,o'.")


def _build_parser() -> argparse.ArgumentParser:
    from .curvature.collect import CollectConfig
    from .edit.apply import EditConfig

    parser = argparse.ArgumentParser(prog="unmemorize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"unmemorize {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    collect = commands.add_parser("collect", help="Collect K-FAC factors A and G for target modules.",
                                  description="Collect K-FAC factors (A = E[a a^T], G = E[g g^T]) for the target modules "
                                  "on a text or pre-tokenized data set and write a factor folder.")
    _add_model_options(collect)
    collect.add_argument("--data", required=True, help=".txt (a document per line), .jsonl ('text' or 'input_ids'), or a folder of them.")
    collect.add_argument("--out", required=True, help="Factor folder to write (factors.json + factors.safetensors).")
    collect.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    _add_target_options(collect)
    _add_config_options(collect, CollectConfig)

    edit = commands.add_parser("edit", help="Edit the weights and save the edited model.",
                               description="Remove low-curvature components (or SVD / random controls) from the target "
                               "modules and save a complete Hugging Face model folder with unmemorize_edit.json.")
    _add_model_options(edit)
    edit.add_argument("--factors", help="Factor folder from 'unmemorize collect' (needed for kfac and random).")
    edit.add_argument("--out", required=True, help="Model folder to write.")
    edit.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    amount = edit.add_mutually_exclusive_group(required=True)
    amount.add_argument("--rho", type=float, help="Curvature mass kept by every target, in [0, 1] (1: no edit). For "
                        "--method svd: energy kept, or the fraction pruned with --svd-mode prune.")
    amount.add_argument("--plan", help="JSON plan: {\"23\": {\"gate\": 0.6, \"up\": 0.6}} or {\"module.name\": rho}.")
    amount.add_argument("--ppl-budget", type=float, help="Label-free tuning: search layers, projections and rho for the most "
                        "aggressive K-FAC plan whose perplexity on --heldout stays within this ratio of the baseline (e.g. 1.10).")
    edit.add_argument("--heldout", help="Clean held-out text (.txt/.jsonl) for --ppl-budget; never memorized examples.")
    _add_target_options(edit)
    _add_config_options(edit, EditConfig)

    spectrum = commands.add_parser("spectrum", help="Per-module spectra table and plot.",
                                   description="Eigendecompose the factors and print, per module, effective ranks, "
                                   "ranks at 90/99% of each trace and the fraction of pairs each rho keeps; save a PNG plot.")
    spectrum.add_argument("--factors", required=True, help="Factor folder.")
    spectrum.add_argument("--out", help="PNG file for the plot (default: <factors>/spectrum.png).")
    spectrum.add_argument("--rhos", default="0.6,0.8,0.9,0.95,0.99", help="rho values for the kept-pairs columns.")
    spectrum.add_argument("--json", action="store_true", help="Print the table as JSON instead of Markdown.")

    from .demo import DemoConfig

    demo = commands.add_parser("demo", help="The paper's experiment on the built-in testbed; writes report.md.",
                               description="Train (or load) the testbed, collect factors, sweep plans on the tuning split, "
                               "edit, evaluate baseline / K-FAC / SVD / random, write report.md, results.json and plots.")
    _add_config_options(demo, DemoConfig)

    testbed = commands.add_parser("testbed", help="Train or inspect the built-in testbed.",
                                  description="The testbed: a Llama-style model trained on a generated world with known "
                                  "memorized sequences and skills; cached by a hash of the code version and configs.")
    testbed.add_argument("action", choices=["train", "info"], help="train: train (or reuse) it; info: print its folder and summary.")
    testbed.add_argument("--quick", action="store_true", help="The tiny variant (seconds).")
    testbed.add_argument("--seed", type=int, default=0, help="World and training seed (default: 0).")
    testbed.add_argument("--retrain", action="store_true", help="Train again even if the cache has it.")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _run_collect(args) -> None:
    from .curvature import CollectConfig, ShardedFactorWriter, collect_from_files, save_factors
    from ._atomic import check_output_dir
    from .data import list_data_files
    from .models import load_model
    from .targets import resolve_targets

    config = _config_from_args(CollectConfig, args)
    config.validate()
    check_output_dir(args.out, args.overwrite)
    list_data_files(args.data)
    model, tokenizer = load_model(args.model, args.model_dtype, args.device, args.trust_remote_code)
    targets = resolve_targets(model, args.targets, args.layers, args.proj)
    print(f"collecting {config.fisher} Fisher factors for {len(targets)} modules of {type(model).__name__}", file=sys.stderr)
    if 0 < config.modules_per_pass < len(targets):  # bounded memory: one shard per pass, written as it ends
        with ShardedFactorWriter(args.out, model, args.overwrite) as writer:
            factors = collect_from_files(model, tokenizer, args.data, targets, config, on_pass=writer.write_pass)
            writer.finish(factors)
    else:
        factors = collect_from_files(model, tokenizer, args.data, targets, config)
        save_factors(factors, args.out, model=model, overwrite=args.overwrite)
    meta = factors.metadata
    print(f"wrote {args.out}: {len(targets)} modules, {factors.num_positions} positions, {meta['tokens']} tokens, {meta['seconds']:.1f} s")


def _run_edit(args) -> None:
    from ._atomic import check_output_dir
    from .curvature import load_factors
    from .edit import EditConfig, apply_edit, load_plan, save_edited_model, uniform_plan
    from .models import load_model
    from .targets import resolve_targets

    config = _config_from_args(EditConfig, args)
    config.validate()
    if args.rho is not None:
        uniform_plan([], args.rho)  # validates rho before any loading
    check_output_dir(args.out, args.overwrite)
    if config.method in ("kfac", "random") and not args.factors:
        raise UnmemorizeError(f"--method {config.method} needs --factors DIR")
    model, tokenizer = load_model(args.model, args.model_dtype, args.device, args.trust_remote_code)
    factors = None
    search_record = None
    if args.ppl_budget is not None:
        plan, search_record, factors = _search_plan(args, model, tokenizer, config)
    elif args.plan:
        plan = load_plan(args.plan, model)
    else:
        if args.targets or args.layers or args.proj:
            targets = resolve_targets(model, args.targets, args.layers, args.proj)
        elif args.factors:
            targets = _factor_modules(args.factors)
        else:
            targets = resolve_targets(model)
        plan = uniform_plan(targets, args.rho)
    if args.factors and factors is None:
        factors = load_factors(args.factors, model=model, modules=list(plan))
        factors.metadata["path"] = str(args.factors)
    edit = apply_edit(model, plan, factors, config)
    extra = {"model": args.model, **({"label_free_search": search_record} if search_record else {})}
    save_edited_model(edit, args.out, tokenizer, overwrite=args.overwrite, extra=extra)
    for name, stats in edit.modules.items():
        mass = f"mass {stats.kept_mass:.4f}" if stats.kept_mass is not None else ""
        print(f"{name}: rho={stats.rho:g} kept {stats.kept_pairs}/{stats.total_pairs} ({stats.kept_fraction:.4f}) {mass} "
              f"|dW|/|W|={stats.relative_change:.4f}")
    print(f"wrote {args.out}")


def _search_plan(args, model, tokenizer, config):
    """--ppl-budget: the label-free search of ``edit/search.py`` on --heldout text; returns (plan, record, factors)."""
    from .basis import decompose_factors
    from .curvature import load_factors
    from .data import iter_windows, list_data_files
    from .edit.search import search_plan

    if config.method != "kfac" or not args.factors or not args.heldout:
        raise UnmemorizeError("--ppl-budget needs --method kfac, --factors DIR and --heldout FILE")
    factors = load_factors(args.factors, model=model)
    windows = list(iter_windows(list_data_files(args.heldout), tokenizer, 128, 20_000))
    search = search_plan(model, factors, decompose_factors(factors), windows, args.ppl_budget)
    if search.plan is None:
        raise UnmemorizeError(f"no plan keeps perplexity within {args.ppl_budget} x baseline ({search.baseline_perplexity:.3f})")
    chosen = {k: v for k, v in search.chosen.items() if k != "plan"}
    print(f"label-free search: {len(search.candidates)} candidates; chosen {chosen}", file=sys.stderr)
    factors.metadata["path"] = str(args.factors)
    return search.plan, {"budget": args.ppl_budget, "baseline_perplexity": search.baseline_perplexity, "chosen": chosen,
                         "candidates": [{k: v for k, v in c.items() if k != "plan"} for c in search.candidates]}, factors


def _factor_modules(path: str) -> list[str]:
    info_path = Path(path) / "factors.json"
    if not info_path.is_file():
        raise UnmemorizeError(f"{path!r} is not a factor folder: factors.json is missing")
    try:
        return list(json.loads(info_path.read_text())["modules"])
    except (json.JSONDecodeError, KeyError) as exc:
        raise UnmemorizeError(f"{info_path}: unreadable ({exc})") from None


def _run_spectrum(args) -> None:
    from .basis import decompose_factors
    from .curvature import load_factors
    from .spectrum import format_table, plot_spectra, spectrum_rows

    try:
        rhos = [float(r) for r in args.rhos.split(",") if r.strip()]
    except ValueError:
        raise UnmemorizeError(f"--rhos {args.rhos!r} is not a comma-separated list of numbers") from None
    for rho in rhos:
        if not 0 <= rho <= 1:
            raise UnmemorizeError(f"--rhos values must be in [0, 1], got {rho}")
    factors = load_factors(args.factors)
    bases = decompose_factors(factors)
    rows = spectrum_rows(bases, rhos)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    png = plot_spectra(bases, args.out or Path(args.factors) / "spectrum.png")
    print(f"plot: {png}", file=sys.stderr)


def _run_demo(args) -> None:
    from .demo import DemoConfig, run_demo

    run_demo(_config_from_args(DemoConfig, args))


def _run_testbed(args) -> None:
    from .testbed import TrainConfig, WorldConfig, quick_configs, testbed_dir, train_testbed

    world, train = quick_configs(args.seed) if args.quick else (WorldConfig(seed=args.seed), TrainConfig(seed=args.seed))
    folder = testbed_dir(world, train)
    if args.action == "train" and (args.retrain or not (folder / "testbed.json").is_file()):
        train_testbed(world, train, folder, overwrite=True)
    if not (folder / "testbed.json").is_file():
        raise UnmemorizeError(f"no trained testbed at {folder}; run 'unmemorize testbed train'")
    info = json.loads((folder / "testbed.json").read_text())
    print(f"{folder}\nkey {info['key']}: {info['parameters']:,} parameters, {info['tokens']:,} tokens, {info['steps']} steps, "
          f"{info['seconds']:.0f} s, final loss {info['loss_curve'][-1]['loss_ema'] if info['loss_curve'] else '?'}")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar and messages are enough
    runners = {"collect": _run_collect, "edit": _run_edit, "spectrum": _run_spectrum, "demo": _run_demo, "testbed": _run_testbed}
    try:
        runners[args.command](args)
    except UnmemorizeError as exc:
        print(f"unmemorize: error: {exc}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
