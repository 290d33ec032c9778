"""``unmemorize eval``: lm-evaluation-harness on a model folder or its in-memory edit (``evaluate/lm_eval_bridge.py``)."""

from __future__ import annotations

import argparse
import sys

from ..evaluate.lm_eval_bridge import EvalRequest, LMEvalConfig, format_rows, run_lm_eval
from ..jsonio import write_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize eval``."""
    parser = subparsers.add_parser(
        "eval", help="Score a model (or its in-memory edit) with lm-evaluation-harness.",
        description="Run lm-evaluation-harness tasks (pip install 'unmemorize[eval]') on a model folder, or on its edit "
        "applied in memory (--edit-plan/--edit-rho with --factors) without saving it. Prints a table; --out writes JSON.")
    parser.add_argument("--model", required=True, help="Model folder (e.g. written by 'unmemorize edit') or hub id.")
    parser.add_argument("--lm-eval", required=True, dest="tasks", metavar="TASKS", help=LMEvalConfig.__dataclass_fields__["tasks"].metadata["help"])
    for name in ("include_path", "builtin_tasks", "batch_size", "num_fewshot", "limit", "bootstrap_iters"):
        spec = LMEvalConfig.__dataclass_fields__[name]
        flag, help_text = "--" + name.replace("_", "-"), f"{spec.metadata['help']} (default: {spec.default})"
        if name == "builtin_tasks":
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            kind = {"include_path": str, "batch_size": int, "num_fewshot": int, "limit": float, "bootstrap_iters": int}[name]
            parser.add_argument(flag, type=kind, default=spec.default, help=help_text)
    edit = parser.add_mutually_exclusive_group()
    edit.add_argument("--edit-plan", help="JSON plan (as for 'unmemorize edit --plan'): evaluate this edit, applied in memory.")
    edit.add_argument("--edit-rho", type=float, help="Evaluate the edit keeping rho of the curvature mass in every module of --factors.")
    parser.add_argument("--factors", help="Factor folder for the in-memory edit (its cached bases are used when present).")
    parser.add_argument("--method", default="kfac", choices=["kfac", "svd", "random"], help="Edit method (default: kfac).")
    parser.add_argument("--eigh-dtype", default="float64", choices=["float64", "float32"], help="eigh dtype of the edit (default: float64).")
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                        help="dtype the model is loaded in (default: float32).")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu).")
    parser.add_argument("--trust-remote-code", action="store_true", help="Allow the model's own Python code to run (off by default).")
    parser.add_argument("--out", help="JSON file for the scores, the configuration and the edit statistics.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --out file.")
    return parser


def run(args) -> None:
    """The ``eval`` command: ``run_lm_eval``, a Markdown table on stdout, optional JSON file."""
    config = LMEvalConfig(tasks=args.tasks, include_path=args.include_path, builtin_tasks=args.builtin_tasks,
                          batch_size=args.batch_size, num_fewshot=args.num_fewshot, limit=args.limit, bootstrap_iters=args.bootstrap_iters)
    from contextlib import nullcontext

    from .._atomic import atomic_file
    from ..paths import command_output

    inputs = {"--model": args.model, "--factors": args.factors, "--edit-plan": args.edit_plan, "--include-path": args.include_path}
    claim = command_output(args.out, args.overwrite, inputs, kind="file") if args.out else nullcontext()
    with claim as out:  # checked and claimed before any work
        request = EvalRequest(model=args.model, lm_eval=config, edit_plan=args.edit_plan, edit_rho=args.edit_rho, factors=args.factors,
                              method=args.method, eigh_dtype=args.eigh_dtype, model_dtype=args.model_dtype, device=args.device,
                              trust_remote_code=args.trust_remote_code)
        record = run_lm_eval(request)
        print(format_rows(record["rows"]))
        if out is None:
            return
        with atomic_file(out, args.overwrite) as tmp:
            write_json(tmp, record)  # strict JSON: NaN/Inf (e.g. a stderr lm-eval could not compute) as null
        print(f"wrote {out}", file=sys.stderr)
