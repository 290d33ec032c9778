"""``unmemorize analyze``: band activation ratios of memorized, task and clean inputs in the K-FAC and SVD
bases (paper Figures 2 and 4; ``analysis/``)."""

from __future__ import annotations

import argparse

from ..errors import UnmemorizeError
from .options import add_config_options, add_model_options, add_target_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize analyze``."""
    from ..analysis import AnalyzeConfig

    analyze = subparsers.add_parser("analyze", help="Band activation ratios memorized/clean in K-FAC and SVD bases (Figures 2, 4).",
                                    description="Project the inputs of the chosen layers on curvature-ordered bases (K-FAC and "
                                    "SVD), group them in bands (top 10%, 10-25%, 25-50%, bottom 50%) and compare the mean band "
                                    "activation of memorized (and task) inputs with clean ones: table, JSON, plots, separation score.")
    add_model_options(analyze)
    analyze.add_argument("--factors", help="Factor folder (needed for the K-FAC bases; without it use --bases svd).")
    analyze.add_argument("--clean", required=True, help="Clean reference: text (.txt/.jsonl) or images (a folder of class subfolders, a datasets folder, a parquet "
                         "file with an image column, through the model's image processor; or .safetensors 'pixel_values').")
    analyze.add_argument("--memorized", help="Memorized examples (.jsonl with prefix/suffix ids, text, or images as for --clean).")
    analyze.add_argument("--source", action="append", metavar="NAME=PATH", default=[],
                         help="Another source compared with the clean reference (repeatable).")
    analyze.add_argument("--tasks", help="Task .jsonl (prompt + gold answer per row); one source per task name.")
    analyze.add_argument("--compare", action="append", metavar="A/B", default=[],
                         help="Also compare two sources directly, e.g. memorized/control (repeatable).")
    after = analyze.add_mutually_exclusive_group()
    after.add_argument("--edited", help="Edited model folder (from 'unmemorize edit'): --tasks are evaluated on both models, "
                       "giving each task's retention and, per row, whether low-curvature loading predicts what the edit breaks.")
    after.add_argument("--retention", help="JSON {source: retention after an edit} or a demo results.json: adds the "
                       "loading-vs-retention scatter and its Spearman correlation.")
    analyze.add_argument("--out", required=True, help="Folder for analysis.json, analysis.md and the plots.")
    analyze.add_argument("--overwrite", action="store_true", help="Replace an existing output folder (only one unmemorize wrote).")
    analyze.add_argument("--allow-foreign-factors", action="store_true", help="Use factors collected on other weights than --model's.")
    add_target_options(analyze)
    add_config_options(analyze, AnalyzeConfig)
    return analyze


def _parse_sources(args) -> dict[str, str]:
    """--memorized and --source NAME=PATH as {name: path} (the clean reference is added by the caller)."""
    sources = {}
    if args.memorized:
        sources["memorized"] = args.memorized
    for spec in args.source:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UnmemorizeError(f"--source {spec!r} must be NAME=PATH")
        if name in sources or name == "clean":
            raise UnmemorizeError(f"--source name {name!r} is used twice (or is 'clean')")
        sources[name] = path
    if not sources and not args.tasks:
        raise UnmemorizeError("nothing to compare: give --memorized, --source NAME=PATH or --tasks")
    return sources


def run(args) -> None:
    """Parse sources and comparisons, then ``analysis.job.run_analyze_job`` (it checks every input before any work)."""
    from ..analysis import AnalyzeConfig
    from ..analysis.job import AnalyzeJob, run_analyze_job

    config = config_from_args(AnalyzeConfig, args)
    config.validate()
    sources = {"clean": args.clean, **_parse_sources(args)}
    comparisons = [_parse_comparison(spec) for spec in args.compare]
    run_analyze_job(AnalyzeJob(model=args.model, sources=sources, out=args.out, config=config, factors=args.factors, tasks=args.tasks,
                               comparisons=comparisons, edited=args.edited, retention=args.retention, targets=args.targets,
                               layers=args.layers, projections=args.proj, model_dtype=args.model_dtype, device=args.device,
                               trust_remote_code=args.trust_remote_code, allow_foreign_factors=args.allow_foreign_factors,
                               overwrite=args.overwrite))


def _parse_comparison(spec: str) -> tuple[str, str]:
    source, sep, reference = spec.partition("/")
    if not sep or not source or not reference or "/" in reference:
        raise UnmemorizeError(f"--compare {spec!r} must be A/B with two source names, e.g. memorized/control")
    return source, reference
