"""One ``unmemorize analyze`` run as a job: every input checked before any work, then the band
analysis of ``run.py`` written as a folder (analysis.json, analysis.md, plots).

``AnalyzeJob`` holds what the command line gives; ``run_analyze_job`` checks the --edited folder,
the factor folder and the options, claims the output, loads the model(s), builds the sources
(text, images or tasks), runs ``band_analysis`` and, with ``edited``, measures each task's and each
row's retention on the edited model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..curvature.factors import factor_modules
from ..errors import UnmemorizeError
from .run import AnalyzeConfig


@dataclass
class AnalyzeJob:
    """What one analysis reads and writes (``unmemorize analyze``'s options, parsed)."""

    model: str
    sources: dict[str, str]  # {"clean": path, name: path, ...}: the clean reference first
    out: str
    config: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    factors: str | None = None
    tasks: str | None = None
    comparisons: list[tuple[str, str]] = field(default_factory=list)  # (source, reference) compared directly
    edited: str | None = None
    retention: str | None = None
    targets: list[str] | None = None
    layers: str | None = None
    projections: str | None = None
    model_dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    allow_foreign_factors: bool = False
    overwrite: bool = False


def run_analyze_job(job: AnalyzeJob) -> None:
    """Check every input (before loading anything), claim ``job.out``, analyse, write the folder."""
    from ..paths import command_output
    from .report import retention_from_file

    job.config.validate()
    basis_names = job.config.basis_list()
    if any(b != "svd" for b in basis_names) and not job.factors:
        raise UnmemorizeError(f"--bases {job.config.bases} needs --factors DIR (or use --bases svd)")
    retention = retention_from_file(job.retention) if job.retention else None
    if job.edited and not job.tasks:
        raise UnmemorizeError("--edited needs --tasks FILE: retention is measured on the tasks")
    edited_record = _edited_record(job.edited) if job.edited else None
    if job.factors:
        factor_modules(job.factors)
    inputs = {"--model": job.model, "--factors": job.factors, "--edited": job.edited, "--retention": job.retention,
              "--tasks": job.tasks, **{f"--source {name}": path for name, path in job.sources.items()}}
    with command_output(job.out, job.overwrite, inputs) as out:
        _analyze(job, basis_names, retention, edited_record, out)


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


def _analyze(job: AnalyzeJob, basis_names, retention, edited_record, out) -> None:
    from .._atomic import atomic_dir
    from ..basis import decompose_factors
    from ..curvature import load_factors
    from ..data import check_token_ids, pad_token_id
    from ..evaluate import evaluate_tasks, load_tasks
    from ..models import load_model, model_limits
    from ..targets import resolve_targets
    from .inputs import TokenSequence, image_sources, load_text_source, resolve_positions, sequence_batches, text_sources
    from .report import print_summary, write_analysis
    from .retention import example_retention, per_task_retention, task_sequences
    from .run import add_comparison, band_analysis

    model, tokenizer = load_model(job.model, job.model_dtype, job.device, job.trust_remote_code)
    if job.edited:
        _check_edited_config(model, job.edited)
    limits = model_limits(model)
    if limits[1] is not None and job.config.seq_len > limits[1]:
        raise UnmemorizeError(f"--seq-len {job.config.seq_len} is longer than the model's {limits[1]} positions")
    images, positions = resolve_positions(model, tokenizer, job.config.positions)
    if job.targets or job.layers or job.projections or not job.factors:
        modules = resolve_targets(model, job.targets, job.layers, job.projections)
    else:
        modules = factor_modules(job.factors)
    if any(b != "svd" for b in basis_names):
        bases = decompose_factors(load_factors(job.factors, model=model, modules=modules, allow_foreign=job.allow_foreign_factors))
    else:
        bases = {}
    task_names, task_rows, task_groups = [], None, None
    if images:
        if job.tasks or job.config.skip_first:
            raise UnmemorizeError("--tasks and --skip-first are for language models; give image sources with --source NAME=FILE.safetensors")
        sources = image_sources(job.sources, model, positions, job.config.batch_size, job.config.max_tokens)
    else:
        if tokenizer is None:
            raise UnmemorizeError(f"{job.model}: the model folder has no tokenizer files; text sources need a tokenizer")
        sources = text_sources(job.sources, tokenizer, positions, job.config.seq_len, job.config.max_tokens, job.config.batch_size, job.config.skip_first,
                               vocab_size=limits[0])
        if job.edited:  # every task row, in file order, so that rows can be matched with their evaluation
            task_rows = load_tasks(job.tasks)
            task_groups = task_sequences(task_rows, tokenizer)
            for members in task_groups.values():
                for _, sequence in members:
                    check_token_ids(sequence.ids, job.tasks, limits[0])
            task_inputs = {task: [s for _, s in members] for task, members in task_groups.items()}
        elif job.tasks:
            task_inputs = {task or "tasks": seqs for task, seqs in
                           load_text_source(job.tasks, tokenizer, job.config.seq_len, job.config.max_tokens, vocab_size=limits[0]).items()}
        else:
            task_inputs = {}
        pad_id = pad_token_id(tokenizer)
        for name, sequences in task_inputs.items():
            if name in sources:
                raise UnmemorizeError(f"task name {name!r} collides with a source name")
            task_names.append(name)
            sequences = [TokenSequence(s.ids[: job.config.seq_len], s.continuation_start) for s in sequences]
            sources[name] = sequence_batches(sequences, positions, job.config.batch_size, pad_id, job.config.skip_first)
    for source, reference in job.comparisons:
        if source not in sources or reference not in sources:
            raise UnmemorizeError(f"--compare {source}/{reference}: both must be source names from {', '.join(sources)}")
    result = band_analysis(model, modules, bases, sources, "clean", basis_names, job.config.floor, per_sequence=task_names if job.edited else (),
                           modules_per_pass=job.config.modules_per_pass, readout_memory_gb=job.config.readout_memory_gb)
    examples = edited_modules = None
    if job.edited:
        edited_modules = [m for m in edited_record["modules"] if m in result["modules"]]
        if not edited_modules:
            raise UnmemorizeError(f"--edited {job.edited!r} edited {', '.join(edited_record['modules'])}, none of which is analysed here")
        base_class, base_shapes = type(model).__name__, {k: tuple(v.shape) for k, v in model.state_dict().items()}
        before = evaluate_tasks(model, tokenizer, task_rows).correct
        del model
        edited_model, _ = load_model(job.edited, job.model_dtype, job.device, job.trust_remote_code)
        _check_same_architecture(base_class, base_shapes, edited_model, job.edited)
        after = evaluate_tasks(edited_model, tokenizer, task_rows).correct
        retention = per_task_retention(task_groups, before, after)
        examples = example_retention(result, task_groups, before, after, edited_modules)
    compared = [name for name in job.sources if name != "clean"] + [add_comparison(result, s, r) for s, r in job.comparisons]
    result["config"] = {**dataclasses.asdict(job.config), "positions": positions, "model": job.model, "factors": job.factors,
                        "sources": {**job.sources, **({"tasks": job.tasks} if job.tasks else {})}}
    with atomic_dir(out, job.overwrite, kind="analysis") as tmp:
        extra = write_analysis(result, tmp, compared, task_names, retention, edited_modules, examples)
    print_summary(extra)
    print(f"wrote {job.out}")
