"""The ``unmemorize`` command: thin wrappers over the library, options generated from the configs.

    unmemorize collect  --model M --data PATH --out DIR [--targets GLOB]... [--fisher true|empirical] ...
    unmemorize edit     --model M --factors DIR --out DIR (--rho X | --plan FILE) [--method kfac|svd|random] ...
    unmemorize spectrum --factors DIR [--out PNG] [--rhos 0.9,0.99]
    unmemorize analyze  --model M --factors DIR --clean FILE --memorized FILE [--tasks FILE] [--retention JSON] --out DIR
    unmemorize decompose --factors DIR [--device cuda] [--dtype float64|float32]
    unmemorize eval     --model DIR --lm-eval TASKS [--factors DIR --edit-plan FILE | --edit-rho X]
    unmemorize stress   --model DIR --items FILE [--controls FILE] [--checks stress,ndcg,relearn,sample,bf16] ... --out JSON
    unmemorize demo     [--out DIR] [--seeds 0,1,2] [--baselines]
    unmemorize compare  [--seeds 0,1,2] [--out DIR]   (K-FAC vs SVD vs BSN with stress test, nDCG and attacks)
    unmemorize unlearn bsn --model M --forget FILE --retain FILE --out DIR [--ratio R] [--alpha A] ...

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
from .jsonio import strict_dumps


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
    from .edit.search import SearchConfig

    parser = argparse.ArgumentParser(prog="unmemorize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"unmemorize {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    collect = commands.add_parser("collect", help="Collect K-FAC factors A and G for target modules.",
                                  description="Collect K-FAC factors (A = E[a a^T], G = E[g g^T]) for the target modules "
                                  "on a text or pre-tokenized data set and write a factor folder.")
    _add_model_options(collect)
    collect.add_argument("--data", required=True, help=".txt (a document per line), .jsonl[.gz|.zst] ('text' or 'input_ids'), "
                         ".parquet, a datasets folder (save_to_disk), or a folder of them.")
    collect.add_argument("--out", required=True, help="Factor folder to write (factors.json + factors.safetensors).")
    collect.add_argument("--overwrite", action="store_true", help="Replace an existing output folder (only one unmemorize wrote).")
    collect.add_argument("--resume", action="store_true", help="Continue an interrupted collection of --out from its checkpoint "
                         "(.<out>.checkpoint); a checkpoint made with other settings is refused.")
    collect.add_argument("--device-map", help="Load a model larger than one device with accelerate's dispatch, e.g. 'auto' "
                         "(layers over the visible GPUs, then the CPU); not with torchrun.")
    collect.add_argument("--dry-run", action="store_true", help="Print the plan (factor bytes, peak memory per device, disk, time "
                         "from a short measured warm-up) and write nothing.")
    _add_target_options(collect)
    _add_config_options(collect, CollectConfig)

    edit = commands.add_parser("edit", help="Edit the weights and save the edited model.",
                               description="Remove low-curvature components (or SVD / random controls) from the target "
                               "modules and save a complete Hugging Face model folder with unmemorize_edit.json.")
    _add_model_options(edit)
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
    _add_target_options(edit)
    _add_config_options(edit, EditConfig)
    _add_config_options(edit, SearchConfig)

    spectrum = commands.add_parser("spectrum", help="Per-module spectra table and plot.",
                                   description="Eigendecompose the factors and print, per module, effective ranks, "
                                   "ranks at 90/99% of each trace and the fraction of pairs each rho keeps; save a PNG plot.")
    spectrum.add_argument("--factors", required=True, help="Factor folder.")
    spectrum.add_argument("--out", help="PNG file for the plot (default: <factors>/spectrum.png, the one file a command adds "
                          "beside an input).")
    spectrum.add_argument("--overwrite", action="store_true", help="Replace an existing plot (only a PNG unmemorize wrote).")
    spectrum.add_argument("--rhos", default="0.6,0.8,0.9,0.95,0.99", help="rho values for the kept-pairs columns.")
    spectrum.add_argument("--json", action="store_true", help="Print the table as JSON instead of Markdown.")

    from .analysis import AnalyzeConfig

    analyze = commands.add_parser("analyze", help="Band activation ratios memorized/clean in K-FAC and SVD bases (Figures 2, 4).",
                                  description="Project the inputs of the chosen layers on curvature-ordered bases (K-FAC and "
                                  "SVD), group them in bands (top 10%, 10-25%, 25-50%, bottom 50%) and compare the mean band "
                                  "activation of memorized (and task) inputs with clean ones: table, JSON, plots, separation score.")
    _add_model_options(analyze)
    analyze.add_argument("--factors", help="Factor folder (needed for the K-FAC bases; without it use --bases svd).")
    analyze.add_argument("--clean", required=True, help="Clean reference: text (.txt/.jsonl) or images (.safetensors 'pixel_values').")
    analyze.add_argument("--memorized", help="Memorized examples (.jsonl with prefix/suffix ids, text, or .safetensors images).")
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
    _add_target_options(analyze)
    _add_config_options(analyze, AnalyzeConfig)

    from .testbed.demo import DemoConfig

    demo = commands.add_parser("demo", help="The paper's experiment on the built-in testbed; writes report.md.",
                               description="Train (or load) the testbed, collect factors, sweep plans on the tuning split, "
                               "edit, evaluate baseline / K-FAC / SVD / random, write report.md, results.json and plots.")
    _add_config_options(demo, DemoConfig)

    from .testbed.compare import CompareConfig

    compare = commands.add_parser("compare", help="K-FAC vs SVD vs BalancedSubnet on the testbed, with stress test, nDCG and attacks.",
                                  description="Per seed: sweep K-FAC (layers x rho), SVD (layers x energy) and BSN (ratio x alpha x "
                                  "epochs), choose each by the same rule on the tuning split, then evaluate the chosen edits: "
                                  "memorization, perplexity, tasks, stress test, nDCG@10, relearning, sampled extraction, bf16. "
                                  "Writes report.md, results.json and pareto.png.")
    _add_config_options(compare, CompareConfig)

    from .baselines.cli import add_unlearn_command
    from .decompose import add_decompose_command
    from .evaluate.checks import add_stress_command
    from .evaluate.lm_eval_bridge import add_eval_command

    add_decompose_command(commands)
    add_eval_command(commands)
    add_stress_command(commands)
    add_unlearn_command(commands)

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
    from .curvature import CollectConfig
    from .curvature.job import CollectJob, run_collect_job
    from .data import list_data_files

    config = _config_from_args(CollectConfig, args)
    config.validate()
    list_data_files(args.data)
    job = CollectJob(model=args.model, data=args.data, out=args.out, config=config, model_dtype=args.model_dtype, device=args.device,
                     device_map=args.device_map, trust_remote_code=args.trust_remote_code, targets=args.targets, layers=args.layers,
                     projections=args.proj, overwrite=args.overwrite, resume=args.resume)
    if args.dry_run:
        from .curvature.plan import print_collect_plan

        print_collect_plan(job)
        return
    meta = run_collect_job(job)
    if meta is not None:
        print(f"wrote {args.out}: {meta['modules']} modules, {meta['num_positions']} positions, {meta['tokens']} tokens, "
              f"{meta['seconds']:.1f} s")


def _run_edit(args) -> None:
    from .curvature import load_factors
    from .edit import EditConfig, apply_edit, load_plan, save_edited_model, uniform_plan
    from .models import load_model
    from .paths import command_output
    from .targets import resolve_targets

    config = _config_from_args(EditConfig, args)
    config.validate()
    if args.rho is not None:
        uniform_plan([], args.rho)  # validates rho before any loading
    if args.ppl_budget is not None and not args.ppl_budget >= 1:
        raise UnmemorizeError(f"--ppl-budget must be >= 1 (a perplexity ratio, e.g. 1.10), got {args.ppl_budget}")
    if args.ppl_budget is not None:
        from .edit.search import SearchConfig

        _config_from_args(SearchConfig, args).validate()  # before any loading
    if config.method in ("kfac", "random") and not args.factors:
        raise UnmemorizeError(f"--method {config.method} needs --factors DIR")
    if args.factors:
        _factor_modules(args.factors)  # a readable factor folder, before any loading
    inputs = {"--model": args.model, "--factors": args.factors, "--plan": args.plan, "--heldout": args.heldout}
    if args.dry_run:
        _edit_dry_run(args, config, inputs)
        return
    with command_output(args.out, args.overwrite, inputs) as out:
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
            factors = load_factors(args.factors, model=model, modules=list(plan), allow_foreign=args.allow_foreign_factors)
        edit = apply_edit(model, plan, factors, config)
        extra = {"model": args.model, **({"label_free_search": search_record} if search_record else {})}
        save_edited_model(edit, out, tokenizer, overwrite=args.overwrite, extra=extra)
    for name, stats in edit.modules.items():
        mass = f"mass {stats.kept_mass:.4f}" if stats.kept_mass is not None else ""
        print(f"{name}: rho={stats.rho:g} kept {stats.kept_pairs}/{stats.total_pairs} ({stats.kept_fraction:.4f}) {mass} "
              f"|dW|/|W|={stats.relative_change:.4f}")
    print(f"wrote {args.out}")


def _edit_dry_run(args, config, inputs) -> None:
    """edit --dry-run: the numbers of ``edit/estimate.py`` for this plan; nothing is written."""
    from .curvature.factors import read_factor_info
    from .edit import load_plan, uniform_plan
    from .edit.estimate import edit_estimate
    from .models import load_model
    from .paths import check_output
    from .targets import resolve_targets

    check_output(args.out, inputs)
    if args.ppl_budget is not None:
        raise UnmemorizeError("--dry-run plans one edit; with --ppl-budget, plan the edit the search would try last (--rho 0.6)")
    model, _ = load_model(args.model, args.model_dtype, args.device, args.trust_remote_code)
    if args.plan:
        plan = load_plan(args.plan, model)
    elif args.targets or args.layers or args.proj or not args.factors:
        plan = uniform_plan(resolve_targets(model, args.targets, args.layers, args.proj), args.rho)
    else:
        plan = uniform_plan(_factor_modules(args.factors), args.rho)
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
    from .basis import decompose_factors
    from .curvature import load_factors
    from .edit.search import SearchConfig, heldout_windows, search_plan

    if config.method != "kfac" or not args.factors or not args.heldout:
        raise UnmemorizeError("--ppl-budget needs --method kfac, --factors DIR and --heldout FILE")
    settings = _config_from_args(SearchConfig, args)
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


def _factor_modules(path: str) -> list[str]:
    from .curvature.factors import read_factor_info

    if not Path(path).is_dir():
        raise UnmemorizeError(f"--factors {path!r} is not a folder")
    return list(read_factor_info(Path(path))["modules"])


def _run_spectrum(args) -> None:
    from .basis import decompose_factors
    from .curvature import load_factors
    from .edit.plan import rho_list
    from .paths import check_output, command_output
    from .spectrum import format_table, plot_spectra, spectrum_rows

    rhos = rho_list(args.rhos, "--rhos")
    _factor_modules(args.factors)
    default = args.out is None
    out = Path(args.factors) / "spectrum.png" if default else Path(args.out)
    # the default plot sits beside the factors: the input may not be replaced, but it may hold this one new file
    inputs = {} if default else {"--factors": args.factors}
    check_output(out, inputs)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UnmemorizeError(f"--out {str(out)!r} must end in .png, .pdf or .svg")
    with command_output(out, args.overwrite, inputs, kind="file"):
        factors = load_factors(args.factors)
        bases = decompose_factors(factors)
        rows = spectrum_rows(bases, rhos)
        png = plot_spectra(bases, out, overwrite=args.overwrite)
    print(strict_dumps(rows) if args.json else format_table(rows))
    print(f"plot: {png}", file=sys.stderr)


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


def _run_analyze(args) -> None:
    from .analysis import AnalyzeConfig
    from .analysis.report import retention_from_file
    from .paths import command_output

    config = _config_from_args(AnalyzeConfig, args)
    config.validate()
    basis_names = config.basis_list()
    paths = {"clean": args.clean, **_parse_sources(args)}
    comparisons = [_parse_comparison(spec) for spec in args.compare]
    if any(b != "svd" for b in basis_names) and not args.factors:
        raise UnmemorizeError(f"--bases {config.bases} needs --factors DIR (or use --bases svd)")
    retention = retention_from_file(args.retention) if args.retention else None
    if args.edited and not args.tasks:
        raise UnmemorizeError("--edited needs --tasks FILE: retention is measured on the tasks")
    edited_record = _edited_record(args.edited) if args.edited else None
    if args.factors:
        _factor_modules(args.factors)
    inputs = {"--model": args.model, "--factors": args.factors, "--edited": args.edited, "--retention": args.retention,
              "--tasks": args.tasks, **{f"--source {name}": path for name, path in paths.items()}}
    with command_output(args.out, args.overwrite, inputs) as out:
        _analyze(args, config, basis_names, paths, comparisons, retention, edited_record, out)


def _edited_record(folder: str) -> dict:
    """unmemorize_edit.json of an --edited folder: it names the edited modules (no silent 'all modules')."""
    if not Path(folder, "config.json").is_file():
        raise UnmemorizeError(f"--edited {folder!r} is not a model folder (config.json is missing)")
    record = Path(folder, "unmemorize_edit.json")
    if not record.is_file():
        raise UnmemorizeError(f"--edited {folder!r} has no unmemorize_edit.json naming the edited modules; give a folder "
                              "written by 'unmemorize edit'")
    try:
        info = json.loads(record.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnmemorizeError(f"{record}: unreadable ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("modules"), dict) or not info["modules"]:
        raise UnmemorizeError(f"{record}: 'modules' must name the edited modules")
    return info


def _check_same_architecture(base_class: str, base_shapes: dict, edited, name: str) -> None:
    """--edited must be an edit of --model: same class and the same parameter names and shapes."""
    if type(edited).__name__ != base_class:
        raise UnmemorizeError(f"--edited {name!r} is a {type(edited).__name__}, not an edit of the {base_class} given as --model")
    edited_shapes = {k: tuple(v.shape) for k, v in edited.state_dict().items()}
    if base_shapes != edited_shapes:
        differing = sorted(set(base_shapes.items()) ^ set(edited_shapes.items()))
        raise UnmemorizeError(f"--edited {name!r} has another architecture than --model (first difference: {differing[0][0]}); "
                              "it cannot be an edit of it")


def _check_edited_config(model, folder: str) -> None:
    """Before any work: the --edited folder's config describes the same architecture as --model's."""
    import transformers

    try:
        edited = transformers.AutoConfig.from_pretrained(folder).to_dict()
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise UnmemorizeError(f"--edited {folder!r}: cannot read its config ({str(exc).splitlines()[0]})") from None
    base = model.config.to_dict()
    keys = ["model_type", "architectures"] + sorted(k for k, v in base.items() if isinstance(v, int) and not isinstance(v, bool)
                                                    and k.endswith(("size", "layers", "heads", "positions", "_embd", "_layer")))
    differing = [k for k in keys if base.get(k) != edited.get(k)]
    if differing:
        k = differing[0]
        raise UnmemorizeError(f"--edited {folder!r} is not an edit of --model: its {k} is {edited.get(k)!r}, the model's is {base.get(k)!r}")


def _analyze(args, config, basis_names, paths, comparisons, retention, edited_record, out) -> None:
    from ._atomic import atomic_dir
    from .analysis import TokenSequence, add_comparison, band_analysis
    from .analysis.inputs import image_sources, load_text_source, resolve_positions, sequence_batches, text_sources
    from .analysis.report import print_summary, write_analysis
    from .analysis.retention import example_retention, per_task_retention, task_sequences
    from .basis import decompose_factors
    from .curvature import load_factors
    from .data import check_token_ids, pad_token_id
    from .evaluate import evaluate_tasks, load_tasks
    from .models import load_model, model_limits
    from .targets import resolve_targets

    model, tokenizer = load_model(args.model, args.model_dtype, args.device, args.trust_remote_code)
    if args.edited:
        _check_edited_config(model, args.edited)
    limits = model_limits(model)
    if limits[1] is not None and config.seq_len > limits[1]:
        raise UnmemorizeError(f"--seq-len {config.seq_len} is longer than the model's {limits[1]} positions")
    images, positions = resolve_positions(model, tokenizer, config.positions)
    if args.targets or args.layers or args.proj or not args.factors:
        modules = resolve_targets(model, args.targets, args.layers, args.proj)
    else:
        modules = _factor_modules(args.factors)
    if any(b != "svd" for b in basis_names):
        bases = decompose_factors(load_factors(args.factors, model=model, modules=modules, allow_foreign=args.allow_foreign_factors))
    else:
        bases = {}
    task_names, task_rows, task_groups = [], None, None
    if images:
        if args.tasks or config.skip_first:
            raise UnmemorizeError("--tasks and --skip-first are for language models; give image sources with --source NAME=FILE.safetensors")
        sources = image_sources(paths, model, positions, config.batch_size, config.max_tokens)
    else:
        if tokenizer is None:
            raise UnmemorizeError(f"{args.model}: the model folder has no tokenizer files; text sources need a tokenizer")
        sources = text_sources(paths, tokenizer, positions, config.seq_len, config.max_tokens, config.batch_size, config.skip_first,
                               vocab_size=limits[0])
        if args.edited:  # every task row, in file order, so that rows can be matched with their evaluation
            task_rows = load_tasks(args.tasks)
            task_groups = task_sequences(task_rows, tokenizer)
            for members in task_groups.values():
                for _, sequence in members:
                    check_token_ids(sequence.ids, args.tasks, limits[0])
            task_inputs = {task: [s for _, s in members] for task, members in task_groups.items()}
        elif args.tasks:
            task_inputs = {task or "tasks": seqs for task, seqs in
                           load_text_source(args.tasks, tokenizer, config.seq_len, config.max_tokens, vocab_size=limits[0]).items()}
        else:
            task_inputs = {}
        pad_id = pad_token_id(tokenizer)
        for name, sequences in task_inputs.items():
            if name in sources:
                raise UnmemorizeError(f"task name {name!r} collides with a source name")
            task_names.append(name)
            sequences = [TokenSequence(s.ids[: config.seq_len], s.continuation_start) for s in sequences]
            sources[name] = sequence_batches(sequences, positions, config.batch_size, pad_id, config.skip_first)
    for source, reference in comparisons:
        if source not in sources or reference not in sources:
            raise UnmemorizeError(f"--compare {source}/{reference}: both must be source names from {', '.join(sources)}")
    result = band_analysis(model, modules, bases, sources, "clean", basis_names, config.floor, per_sequence=task_names if args.edited else (),
                           modules_per_pass=config.modules_per_pass, readout_memory_gb=config.readout_memory_gb)
    examples = edited_modules = None
    if args.edited:
        edited_modules = [m for m in edited_record["modules"] if m in result["modules"]]
        if not edited_modules:
            raise UnmemorizeError(f"--edited {args.edited!r} edited {', '.join(edited_record['modules'])}, none of which is analysed here")
        base_class, base_shapes = type(model).__name__, {k: tuple(v.shape) for k, v in model.state_dict().items()}
        before = evaluate_tasks(model, tokenizer, task_rows).correct
        del model
        edited_model, _ = load_model(args.edited, args.model_dtype, args.device, args.trust_remote_code)
        _check_same_architecture(base_class, base_shapes, edited_model, args.edited)
        after = evaluate_tasks(edited_model, tokenizer, task_rows).correct
        retention = per_task_retention(task_groups, before, after)
        examples = example_retention(result, task_groups, before, after, edited_modules)
    compared = [name for name in paths if name != "clean"] + [add_comparison(result, s, r) for s, r in comparisons]
    result["config"] = {**dataclasses.asdict(config), "positions": positions, "model": args.model, "factors": args.factors,
                        "sources": {**paths, **({"tasks": args.tasks} if args.tasks else {})}}
    with atomic_dir(out, args.overwrite, kind="analysis") as tmp:
        extra = write_analysis(result, tmp, compared, task_names, retention, edited_modules, examples)
    print_summary(extra)
    print(f"wrote {args.out}")


def _parse_comparison(spec: str) -> tuple[str, str]:
    source, sep, reference = spec.partition("/")
    if not sep or not source or not reference or "/" in reference:
        raise UnmemorizeError(f"--compare {spec!r} must be A/B with two source names, e.g. memorized/control")
    return source, reference


def _run_demo(args) -> None:
    from .testbed.demo import DemoConfig, run_demo

    config = _config_from_args(DemoConfig, args)
    config.validate()
    run_demo(config)


def _run_compare(args) -> None:
    from .testbed.compare import CompareConfig, run_comparison

    config = _config_from_args(CompareConfig, args)
    config.validate()
    run_comparison(config)


def _run_decompose(args) -> None:
    from .decompose import run_decompose

    run_decompose(args)


def _run_eval(args) -> None:
    from .evaluate.lm_eval_bridge import run_eval

    run_eval(args)


def _run_stress(args) -> None:
    from .evaluate.checks import run_stress

    run_stress(args)


def _run_unlearn(args) -> None:
    from .baselines.cli import run_unlearn

    run_unlearn(args)


def _run_testbed(args) -> None:
    from .errors import check_seed
    from .testbed import TrainConfig, WorldConfig, quick_configs, testbed_dir, train_testbed

    check_seed(args.seed)
    world, train = quick_configs(args.seed) if args.quick else (WorldConfig(seed=args.seed), TrainConfig(seed=args.seed))
    folder = testbed_dir(world, train)
    if args.action == "train" and (args.retrain or not (folder / "testbed.json").is_file()):
        train_testbed(world, train, folder, overwrite=True)
    if not (folder / "testbed.json").is_file():
        raise UnmemorizeError(f"no trained testbed at {folder}; run 'unmemorize testbed train'")
    info = json.loads((folder / "testbed.json").read_text())
    print(f"{folder}\nkey {info['key']}: {info['parameters']:,} parameters, {info['tokens']:,} tokens, {info['steps']} steps, "
          f"{info['seconds']:.0f} s, final loss {info['loss_curve'][-1]['loss_ema'] if info['loss_curve'] else '?'}")


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that temporary outputs are removed on the way out."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 bad input (one ``unmemorize: error:`` line),
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM); an interrupted run leaves no partial output."""
    import signal

    parser = _build_parser()
    args = parser.parse_args(argv)
    runners = {"collect": _run_collect, "edit": _run_edit, "spectrum": _run_spectrum, "analyze": _run_analyze, "demo": _run_demo,
               "compare": _run_compare,               "testbed": _run_testbed, "decompose": _run_decompose, "eval": _run_eval, "stress": _run_stress,
               "unlearn": _run_unlearn}
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar and messages are enough
        runners[args.command](args)
    except UnmemorizeError as exc:
        print(f"unmemorize: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unmemorize: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except Terminated:
        print("unmemorize: terminated; no partial output was left", file=sys.stderr)
        return 143
    except OSError as exc:  # full disk, read-only folder, permissions: the environment, not a bug
        from ._atomic import disk_error

        print(f"unmemorize: error: {disk_error(exc)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
