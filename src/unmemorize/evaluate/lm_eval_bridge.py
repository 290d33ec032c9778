"""Evaluate with lm-evaluation-harness (optional extra ``unmemorize[eval]``), on a folder or an in-memory edit.

    unmemorize eval --model DIR --lm-eval TASKS [--include-path TASK_DIR] [--edit-plan PLAN.json --factors F] [--out R.json]

The model is loaded as every unmemorize command loads it (``models.load_model``), optionally
edited in memory (``apply_edit``, restored afterwards; nothing is saved), wrapped in lm-eval's
``HFLM(pretrained=<model object>, tokenizer=...)`` and scored by ``lm_eval.simple_evaluate``
with lm-eval's own defaults (seeds 0/1234/1234/1234, bootstrap stderr). A folder written by
``unmemorize edit`` is a plain Hugging Face model: ``lm_eval --model hf --model_args
pretrained=DIR`` scores it the same (tested on a local task), and scoring the in-memory edit
gives the score of the saved folder without writing it.

Local tasks: ``--include-path`` names a folder of lm-eval YAML task files (e.g.
``dataset_path: json`` with ``dataset_kwargs: {data_files: {test: /abs/rows.jsonl}}``); with it
the built-in task registry is not indexed unless ``--builtin-tasks`` is given.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UnmemorizeError


@dataclass
class LMEvalConfig:
    """How lm-eval is run (saved with the results)."""

    tasks: str = field(default="", metadata={"help": "Comma-separated lm-eval task (or group) names."})
    include_path: str | None = field(default=None, metadata={"help": "Folder of extra lm-eval YAML task files (local tasks)."})
    builtin_tasks: bool = field(default=False, metadata={"help": "Also index lm-eval's built-in tasks when --include-path is given "
                                                                  "(always indexed without --include-path)."})
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples per prompt (default: each task's own)."})
    limit: float | None = field(default=None, metadata={"help": "At most this many documents per task (or a fraction if < 1); for smoke runs only."})
    bootstrap_iters: int = field(default=100_000, metadata={"help": "Bootstrap resamples for stderr (lm-eval's default; 0 skips stderr)."})

    def task_list(self) -> list[str]:
        names = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if not names:
            raise UnmemorizeError("--lm-eval needs at least one task name, e.g. --lm-eval hellaswag,arc_easy")
        return names

    def validate(self) -> None:
        self.task_list()
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise UnmemorizeError(f"--include-path {self.include_path!r} is not a folder of lm-eval task YAML files")
        if self.batch_size < 1:
            raise UnmemorizeError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise UnmemorizeError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and not (self.limit > 0 and math.isfinite(self.limit)):
            raise UnmemorizeError(f"--limit must be a positive number, got {self.limit}")
        if self.bootstrap_iters < 0:
            raise UnmemorizeError(f"--bootstrap-iters must be >= 0, got {self.bootstrap_iters}")


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise UnmemorizeError(f"lm-evaluation-harness is not installed ({exc.name} missing); "
                              "install the extra: pip install 'unmemorize[eval]'") from None
    return lm_eval, HFLM, TaskManager


def _json_safe(value):
    """lm-eval results as strict JSON: NaN/Inf -> None, unknown objects -> str."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def score_rows(results: dict) -> list[dict]:
    """Flatten lm-eval's ``{"task": {"acc,none": x, "acc_stderr,none": s}}`` into rows
    ``{task, metric, filter, value, stderr}``."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append({"task": task, "metric": metric, "filter": filter_name, "value": value,
                         "stderr": stderr if isinstance(stderr, (int, float)) else None})
    return rows


def checked_task_manager(config: LMEvalConfig):
    """lm-eval's TaskManager for ``config``, after checking every task exists and the local tasks' rows
    (``check_local_task_rows``): what ``unmemorize eval`` does before it loads the model."""
    _, _, TaskManager = _import_lm_eval()
    include_defaults = config.builtin_tasks or config.include_path is None
    task_manager = TaskManager(include_path=config.include_path, include_defaults=include_defaults)
    unknown = [t for t in config.task_list() if t not in task_manager.all_tasks]
    if unknown:
        where = ""
        if config.include_path:
            where = f" in {config.include_path}" + ("" if include_defaults else " (add --builtin-tasks for lm-eval's own tasks)")
        raise UnmemorizeError(f"unknown lm-eval task(s) {', '.join(unknown)}{where}")
    check_local_task_rows(task_manager, config)
    return task_manager


def evaluate_with_lm_eval(model, tokenizer, config: LMEvalConfig, device: str = "cpu", task_manager=None) -> dict:
    """Score a causal LM object (edited or not) on ``config.tasks`` with lm-eval.

    Returns ``{"results": {task: {metric,filter: value}}, "rows": [...], "n_samples": ...,
    "lm_eval_version": ..., "seconds": ...}`` (strict JSON).
    """
    config.validate()
    lm_eval, HFLM, _ = _import_lm_eval()
    if tokenizer is None:
        raise UnmemorizeError("lm-eval needs the model's tokenizer, and none was found in the model folder")
    start = time.perf_counter()
    task_manager = task_manager or checked_task_manager(config)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=config.batch_size)
    output = lm_eval.simple_evaluate(model=lm, tasks=config.task_list(), num_fewshot=config.num_fewshot, limit=config.limit,
                                     bootstrap_iters=config.bootstrap_iters, task_manager=task_manager, log_samples=False)
    results = _json_safe(output["results"])
    return {"results": results, "rows": score_rows(results), "n_samples": _json_safe(output.get("n-samples", {})),
            "lm_eval_version": _lm_eval_version(), "seconds": round(time.perf_counter() - start, 3)}


def check_local_task_rows(task_manager, config: LMEvalConfig) -> None:
    """The tasks of ``--include-path`` (the user's own YAML and rows): no evaluated row may have a null
    field that its doc_to_text, doc_to_target or doc_to_choice prints. datasets gives a row that lacks
    a column None, and lm-eval then scores the text 'None' without a word. A field counts as printed
    when the row's text changes with it (None against ''), so a template that tests it first
    (``{% if ctx %}``) is left alone."""
    if not config.include_path:
        return
    from lm_eval.utils import apply_template

    root = Path(config.include_path).resolve()

    def yaml_path(name):
        entry = task_manager.task_index.get(name)
        path = entry.get("yaml_path") if isinstance(entry, dict) else getattr(entry, "yaml_path", None)
        return Path(path).resolve() if path else None

    local = [t for t in config.task_list() if (path := yaml_path(t)) is not None and root in path.parents]
    if not local:
        return
    try:
        if hasattr(task_manager, "load"):
            tasks = task_manager.load(local)["tasks"]
        else:  # lm-eval before TaskManager.load
            from lm_eval.tasks import get_task_dict

            tasks = get_task_dict(local, task_manager)
    except Exception as exc:  # noqa: BLE001 - lm-eval and jinja raise many types for a broken task
        raise UnmemorizeError(f"lm-eval cannot build the task(s) {', '.join(local)} of {config.include_path}: "
                              f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    for name, task in tasks.items():
        if not hasattr(task, "eval_docs"):
            continue  # a group: its tasks are listed by their own names
        specs = [spec for spec in (task.config.doc_to_text, task.config.doc_to_target, task.config.doc_to_choice) if isinstance(spec, str)]
        for row, doc in enumerate(task.eval_docs, 1):
            for field in sorted(f for f, value in doc.items() if value is None):
                printed = any(spec == field or (("{{" in spec or "{%" in spec) and
                                                apply_template(spec, doc) != apply_template(spec, {**doc, field: ""})) for spec in specs)
                if printed:
                    raise UnmemorizeError(f"lm-eval task {name}: row {row} of its evaluation split has no {field!r} (null), which "
                                          "its templates print: lm-eval would score the text 'None'; fix the rows")


def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


@dataclass
class EvalRequest:
    """What ``unmemorize eval`` evaluates: a model folder, optionally edited in memory."""

    model: str
    lm_eval: LMEvalConfig
    edit_plan: str | None = None  # JSON plan file (as for 'unmemorize edit --plan')
    edit_rho: float | None = None  # or one rho for every module of the factors
    factors: str | None = None
    method: str = "kfac"
    eigh_dtype: str = "float64"
    model_dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False


def run_lm_eval(request: EvalRequest) -> dict:
    """Load ``request.model``, apply the in-memory edit if one is asked for, evaluate, restore."""
    from ..curvature.factors import load_factors
    from ..edit import EditConfig, apply_edit, load_plan, uniform_plan
    from ..models import load_model

    request.lm_eval.validate()
    edit_config = EditConfig(method=request.method, eigh_dtype=request.eigh_dtype)
    editing = request.edit_plan is not None or request.edit_rho is not None
    if editing:
        edit_config.validate()
        if request.edit_rho is not None:
            uniform_plan([], request.edit_rho)  # checks rho before loading anything
        if request.method != "svd" and not request.factors:
            raise UnmemorizeError(f"an in-memory edit with --method {request.method} needs --factors DIR")
        if request.edit_rho is not None and not request.factors:
            raise UnmemorizeError("--edit-rho edits every module of --factors DIR; give --factors or use --edit-plan")
    task_manager = checked_task_manager(request.lm_eval)  # lm-eval, the tasks and local rows checked before a large model loads
    model, tokenizer = load_model(request.model, request.model_dtype, request.device, request.trust_remote_code)
    edit = None
    if editing:
        if request.edit_plan is not None:
            plan = load_plan(request.edit_plan, model)
        else:
            plan = uniform_plan(_factor_module_names(request.factors), request.edit_rho)
        factors = load_factors(request.factors, model=model, modules=list(plan)) if request.factors else None
        edit = apply_edit(model, plan, factors, edit_config)
    try:
        scores = evaluate_with_lm_eval(model, tokenizer, request.lm_eval, request.device, task_manager)
    finally:
        if edit is not None:
            edit.restore()
    from .._version import __version__

    return {"unmemorize_version": __version__, "model": request.model,
            "request": {k: v for k, v in asdict(request).items() if k != "lm_eval"}, "lm_eval_config": asdict(request.lm_eval),
            "edit": edit.summary() if edit is not None else None, **scores}


def _factor_module_names(path: str) -> list[str]:
    info = Path(path) / "factors.json"
    try:
        return list(json.loads(info.read_text())["modules"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UnmemorizeError(f"{path!r} is not a readable factor folder ({exc})") from None


def format_rows(rows: list[dict]) -> str:
    lines = ["| task | metric | filter | value | stderr |", "|---|---|---|---|---|"]
    for row in rows:
        stderr = f"{row['stderr']:.4f}" if row["stderr"] is not None else ""
        lines.append(f"| {row['task']} | {row['metric']} | {row['filter']} | {row['value']:.4f} | {stderr} |")
    return "\n".join(lines)
