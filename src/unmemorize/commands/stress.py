"""``unmemorize stress``: recitation, the stress test, nDCG@10 and the attacks on one model folder, one JSON
file (``evaluate/checks.py``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from ..errors import UnmemorizeError
from ..evaluate.attacks import ExtractionConfig, RelearnConfig
from ..evaluate.checks import CHECKS, CheckRequest, StressJob, format_summary, run_stress_job
from ..evaluate.coherence import NDCGConfig
from ..evaluate.stress import StressConfig


def _add_options(parser, config_cls, prefix: str, renames: dict | None = None) -> None:
    """``--<prefix><field>`` per dataclass field, help from its metadata; tuples of ints are comma lists."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        flag = (renames or {}).get(f.name) or "--" + (prefix + f.name).replace("_", "-")
        default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        kind = _int_list if typing.get_origin(hints[f.name]) is tuple else hints[f.name]
        if kind is bool:
            parser.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f"{f.metadata['help']} (default: {default})")
            continue
        parser.add_argument(flag, dest=prefix + f.name, type=kind, default=f.default,
                            help=f"{f.metadata['help']} (default: {default})")


def _int_list(text: str) -> tuple[int, ...]:
    """'10,50,200' -> (10, 50, 200); argparse reports a ValueError as 'invalid comma-separated integers value'."""
    return tuple(int(part) for part in text.split(",") if part.strip())


_int_list.__name__ = "comma-separated integers"


def _from_args(config_cls, args, prefix: str):
    return config_cls(**{f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(config_cls)})


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize stress``."""
    parser = subparsers.add_parser(
        "stress", help="Stress test, nDCG@10 and attacks (relearning, sampling, low-bit quantization, bf16) on one model folder.",
        description="Measure greedy recitation of memorization sets, then the paper's position-perturbation stress test, "
        "nDCG@K against a baseline, and attacks that try to bring memorization back: relearning (k AdamW steps), "
        "extraction by sampling, 4- and 8-bit weight quantization, a bf16 round trip. Writes one strict-JSON file.")
    parser.add_argument("--model", required=True, help="Model folder (e.g. written by 'unmemorize edit') or hub id.")
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                        help="dtype the model is loaded in (default: float32).")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu).")
    parser.add_argument("--trust-remote-code", action="store_true", help="Allow the model's own Python code to run (off by default).")
    parser.add_argument("--items", required=True, help="Memorized items (.jsonl, prefix_ids/suffix_ids or prefix/suffix rows).")
    parser.add_argument("--controls", help="Never-trained control items (.jsonl, same format): the floor of every measure.")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=FILE", dest="sets",
                        help="Another set whose recitation is measured before and after each attack (repeatable).")
    parser.add_argument("--checks", default="stress", help=f"Comma list of checks from {', '.join(CHECKS)} (default: stress).")
    parser.add_argument("--baseline", help="Unedited model folder: the nDCG reference (check 'ndcg').")
    parser.add_argument("--ndcg-data", help="Clean .txt (a document per line) for nDCG (check 'ndcg').")
    relearn_data = parser.add_mutually_exclusive_group()
    relearn_data.add_argument("--relearn-items", help="Relearning set: memorized items (.jsonl), trained on as prefix + suffix.")
    relearn_data.add_argument("--relearn-text", help="Relearning set: clean text (.txt/.jsonl/...), cut into --relearn-seq-len "
                              "windows; only the first (largest --relearn-steps x --relearn-batch-size) windows are read, as many "
                              "as the steps can use.")
    _add_options(parser, StressConfig, "stress_", {"batch_size": "--batch-size"})
    _add_options(parser, NDCGConfig, "ndcg_")
    _add_options(parser, RelearnConfig, "relearn_", {"learning_rate": "--relearn-lr"})
    _add_options(parser, ExtractionConfig, "sample_", {"samples": "--samples", "temperature": "--temperature", "top_k": "--top-k",
                                                       "batch_size": "--sample-batch-size"})
    parser.add_argument("--out", required=True, help="JSON file for the results.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --out file (only one unmemorize wrote).")
    return parser


def _parse_sets(args) -> dict[str, str]:
    paths = {"items": args.items, **({"controls": args.controls} if args.controls else {})}
    for spec in args.sets:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UnmemorizeError(f"--set {spec!r} must be NAME=FILE")
        if name in paths:
            raise UnmemorizeError(f"--set name {name!r} is used twice (or is 'items'/'controls')")
        paths[name] = path
    return paths


def _request(args) -> CheckRequest:
    checks = tuple(c.strip() for c in args.checks.split(",") if c.strip())
    unknown = [c for c in checks if c not in CHECKS]
    if not checks or unknown:
        raise UnmemorizeError(f"--checks {args.checks!r}: choose from {', '.join(CHECKS)}")
    stress = _from_args(StressConfig, args, "stress_")
    request = CheckRequest(checks=checks, stress=stress, ndcg=_from_args(NDCGConfig, args, "ndcg_"),
                           relearn=_from_args(RelearnConfig, args, "relearn_"), extraction=_from_args(ExtractionConfig, args, "sample_"),
                           batch_size=stress.batch_size)
    for config in (request.stress, request.ndcg, request.relearn, request.extraction):
        config.validate()
    if "ndcg" in checks and not (args.baseline and args.ndcg_data):
        raise UnmemorizeError("--checks ndcg needs --baseline DIR (the unedited model) and --ndcg-data FILE.txt")
    if "relearn" in checks and not (args.relearn_items or args.relearn_text):
        raise UnmemorizeError("--checks relearn needs --relearn-items FILE.jsonl or --relearn-text PATH")
    for check, options in (("relearn", ("relearn_items", "relearn_text")), ("ndcg", ("baseline", "ndcg_data"))):
        given = [f"--{o.replace('_', '-')}" for o in options if getattr(args, o)]
        if given and check not in checks:
            raise UnmemorizeError(f"{' and '.join(given)} would be ignored: only the {check} check reads "
                                  f"{'them' if len(given) > 1 else 'it'}; add {check} to --checks, or drop {'them' if len(given) > 1 else 'it'}")
    return request


def run(args) -> None:
    """Parse the checks and the sets, then ``evaluate.checks.run_stress_job``; print the summary."""
    request, paths = _request(args), _parse_sets(args)
    job = StressJob(model=args.model, sets=paths, out=args.out, request=request, baseline=args.baseline, ndcg_data=args.ndcg_data,
                    relearn_items=args.relearn_items, relearn_text=args.relearn_text, model_dtype=args.model_dtype, device=args.device,
                    trust_remote_code=args.trust_remote_code, overwrite=args.overwrite)
    record, out = run_stress_job(job)
    print(format_summary(record))
    print(f"wrote {out}", file=sys.stderr)
