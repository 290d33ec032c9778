"""``unmemorize edit``: remove low-curvature components (or the SVD / random controls) and save the model (``edit/``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..curvature.factors import factor_modules
from ..errors import UnmemorizeError
from ..jsonio import strict_dumps
from .options import add_config_options, add_model_options, add_target_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize edit``."""
    from ..edit.apply import EditConfig
    from ..edit.search import SearchConfig

    edit = subparsers.add_parser("edit", help="Edit the weights and save the edited model.",
                                 description="Remove low-curvature components (or SVD / random controls) from the target "
                                 "modules and save a complete Hugging Face model folder with unmemorize_edit.json.")
    add_model_options(edit)
    edit.add_argument("--factors", help="Factor folder from 'unmemorize collect' (needed for kfac and random).")
    edit.add_argument("--out", required=True, help="Model folder to write.")
    edit.add_argument("--overwrite", action="store_true", help="Replace an existing output folder (only one unmemorize wrote).")
    amount = edit.add_mutually_exclusive_group(required=True)
    amount.add_argument("--rho", type=float, help="Curvature mass kept by every target, in [0, 1] (1: no edit). For "
                        "--method svd: energy kept, or the fraction pruned with --svd-mode prune.")
    amount.add_argument("--plan", help="JSON plan: {\"23\": {\"gate\": 0.6, \"up\": 0.6}} or {\"module.name\": rho}.")
    amount.add_argument("--ppl-budget", type=float, help="Label-free tuning: search layers, projections and rho for the most "
                        "aggressive K-FAC plan whose perplexity on --heldout stays within this ratio of the baseline (e.g. 1.10).")
    edit.add_argument("--heldout", help="Clean held-out text (.txt/.jsonl) for --ppl-budget; never memorized examples.")
    edit.add_argument("--dry-run", action="store_true", help="Print the plan (memory, disk, time from a short measurement of "
                      "eigh and GEMM speed here) and write nothing.")
    edit.add_argument("--allow-foreign-factors", action="store_true", help="Use factors whose recorded weight fingerprints "
                      "differ from this model's (collected on other weights); recorded in unmemorize_edit.json.")
    add_target_options(edit)
    add_config_options(edit, EditConfig)
    add_config_options(edit, SearchConfig)
    return edit


def run(args) -> None:
    """Check every option and input before loading; plan (--dry-run) or edit and save the model folder."""
    from ..curvature import load_factors
    from ..edit import EditConfig, apply_edit, load_plan, save_edited_model, uniform_plan
    from ..models import load_model
    from ..paths import command_output
    from ..targets import resolve_targets, untouched, untouched_note

    config = config_from_args(EditConfig, args)
    config.validate()
    if args.rho is not None:
        uniform_plan([], args.rho)  # validates rho before any loading
    if args.ppl_budget is not None and not args.ppl_budget >= 1:
        raise UnmemorizeError(f"--ppl-budget must be >= 1 (a perplexity ratio, e.g. 1.10), got {args.ppl_budget}")
    chosen = [option for option, value in (("--targets", args.targets), ("--layers", args.layers), ("--proj", args.proj)) if value]
    if chosen and (args.plan or args.ppl_budget is not None):
        by = "--plan names its own matrices" if args.plan else "--ppl-budget searches the layers and projections itself"
        raise UnmemorizeError(f"{', '.join(chosen)} would be ignored: {by}; drop {'them' if len(chosen) > 1 else 'it'}, or use --rho")
    if args.ppl_budget is not None:
        from ..edit.search import SearchConfig

        config_from_args(SearchConfig, args).validate()  # before any loading
    if config.method in ("kfac", "random") and not args.factors:
        raise UnmemorizeError(f"--method {config.method} needs --factors DIR")
    if args.factors:
        factor_modules(args.factors)  # a readable factor folder, before any loading
    inputs = {"--model": args.model, "--factors": args.factors, "--plan": args.plan, "--heldout": args.heldout}
    if args.dry_run:
        _edit_dry_run(args, config, inputs)
        return
    with command_output(args.out, args.overwrite, inputs) as out:
        model, tokenizer = load_model(args.model, args.model_dtype, args.device, args.trust_remote_code)
        if tokenizer is None:  # an image classifier: its image processor goes into the edited folder instead
            from ..vision.images import load_image_processor

            tokenizer = load_image_processor(args.model, args.trust_remote_code, required=False)
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
                targets = factor_modules(args.factors)
            else:
                targets = resolve_targets(model)
            plan = uniform_plan(targets, args.rho)
        if args.factors and factors is None:
            factors = load_factors(args.factors, model=model, modules=list(plan), allow_foreign=args.allow_foreign_factors)
        edit = apply_edit(model, plan, factors, config)
        left = untouched(model, list(plan))
        if note := untouched_note(left):
            print(note, file=sys.stderr)
        extra = {"model": args.model, "untouched": left,
                 **({"label_free_search": search_record} if search_record else {})}
        save_edited_model(edit, out, tokenizer, overwrite=args.overwrite, extra=extra)
    for name, stats in edit.modules.items():
        mass = f"mass {stats.kept_mass:.4f}" if stats.kept_mass is not None else ""
        print(f"{name}: rho={stats.rho:g} kept {stats.kept_pairs}/{stats.total_pairs} ({stats.kept_fraction:.4f}) {mass} "
              f"|dW|/|W|={stats.relative_change:.4f}")
    print(f"wrote {args.out}")


def _edit_dry_run(args, config, inputs) -> None:
    """edit --dry-run: the numbers of ``edit/estimate.py`` for this plan; nothing is written."""
    from ..curvature.factors import read_factor_info
    from ..edit import load_plan, uniform_plan
    from ..edit.estimate import edit_estimate
    from ..models import load_model
    from ..paths import check_output
    from ..targets import resolve_targets

    check_output(args.out, inputs)
    if args.ppl_budget is not None:
        raise UnmemorizeError("--dry-run plans one edit; with --ppl-budget, plan the edit the search would try last (--rho 0.6)")
    model, _ = load_model(args.model, args.model_dtype, args.device, args.trust_remote_code)
    if args.plan:
        plan = load_plan(args.plan, model)
    elif args.targets or args.layers or args.proj or not args.factors:
        plan = uniform_plan(resolve_targets(model, args.targets, args.layers, args.proj), args.rho)
    else:
        plan = uniform_plan(factor_modules(args.factors), args.rho)
    shared = read_factor_info(Path(args.factors)).get("shared_activation", {}) if args.factors else {}
    estimate = edit_estimate(model, plan, config, shared, args.model)
    mb = 1024**2  # MiB
    print(f"plan for a {config.method} edit of {estimate['modules']} modules ({estimate['matrices_decomposed']} eigendecompositions, "
          f"{config.eigh_dtype}):\n"
          f"  peak memory   {estimate['peak_bytes'] / mb:.1f} MiB (weights {estimate['weight_bytes'] / mb:.1f}, factors "
          f"{estimate['factor_bytes'] / mb:.1f}, bases {estimate['basis_bytes'] / mb:.1f}, working {estimate['working_bytes'] / mb:.1f})\n"
          f"  disk needed   {estimate['disk_bytes'] / mb:.1f} MiB (the edited model folder)\n"
          f"  estimated     {estimate['estimated_seconds']:.1f} s (eigh and GEMM speed measured here)")
    print(strict_dumps(estimate, indent=None))


def _search_plan(args, model, tokenizer, config):
    """--ppl-budget: the label-free search of ``edit/search.py`` on --heldout text; returns (plan, record, factors)."""
    from ..basis import decompose_factors
    from ..curvature import load_factors
    from ..edit.search import SearchConfig, heldout_windows, search_plan

    if config.method != "kfac" or not args.factors or not args.heldout:
        raise UnmemorizeError("--ppl-budget needs --method kfac, --factors DIR and --heldout FILE")
    settings = config_from_args(SearchConfig, args)
    settings.validate()
    factors = load_factors(args.factors, model=model, allow_foreign=args.allow_foreign_factors)
    windows = heldout_windows(args.heldout, tokenizer, model, settings)
    search = search_plan(model, factors, decompose_factors(factors), windows, args.ppl_budget, settings.rho_values())
    if search.plan is None:
        raise UnmemorizeError(f"no plan keeps perplexity within {args.ppl_budget} x baseline ({search.baseline_perplexity:.3f})")
    chosen = {k: v for k, v in search.chosen.items() if k != "plan"}
    print(f"label-free search: {len(search.candidates)} candidates; chosen {chosen}", file=sys.stderr)
    factors.metadata["path"] = str(args.factors)
    return search.plan, {"budget": args.ppl_budget, "baseline_perplexity": search.baseline_perplexity, "chosen": chosen,
                         "config": dataclasses.asdict(settings), "heldout": search.settings,
                         "candidates": [{k: v for k, v in c.items() if k != "plan"} for c in search.candidates]}, factors
