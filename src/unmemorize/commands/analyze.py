"""``unmemorize analyze``: band activation ratios of memorized, task and clean inputs in the K-FAC and SVD
bases (paper Figures 2 and 4; ``analysis/``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..errors import UnmemorizeError
from .options import add_config_options, add_model_options, add_target_options, config_from_args, factor_modules


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize analyze``."""
    from ..analysis import AnalyzeConfig

    analyze = subparsers.add_parser("analyze", help="Band activation ratios memorized/clean in K-FAC and SVD bases (Figures 2, 4).",
                                    description="Project the inputs of the chosen layers on curvature-ordered bases (K-FAC and "
                                    "SVD), group them in bands (top 10%, 10-25%, 25-50%, bottom 50%) and compare the mean band "
                                    "activation of memorized (and task) inputs with clean ones: table, JSON, plots, separation score.")
    add_model_options(analyze)
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
    """Check sources, comparisons and the --edited folder before any work, then analyse and write the folder."""
    from ..analysis import AnalyzeConfig
    from ..analysis.report import retention_from_file
    from ..paths import command_output

    config = config_from_args(AnalyzeConfig, args)
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
        factor_modules(args.factors)
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
    from .._atomic import atomic_dir
    from ..analysis import TokenSequence, add_comparison, band_analysis
    from ..analysis.inputs import image_sources, load_text_source, resolve_positions, sequence_batches, text_sources
    from ..analysis.report import print_summary, write_analysis
    from ..analysis.retention import example_retention, per_task_retention, task_sequences
    from ..basis import decompose_factors
    from ..curvature import load_factors
    from ..data import check_token_ids, pad_token_id
    from ..evaluate import evaluate_tasks, load_tasks
    from ..models import load_model, model_limits
    from ..targets import resolve_targets

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
        modules = factor_modules(args.factors)
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
